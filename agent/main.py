"""`gpuctl-agent`: the host daemon."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from agent.agent import detect, enroll, run_agent
from agent.blocks import BlocksError
from agent.client import ApiError
from agent.config import DEFAULT_CONFIG, ConfigError, load_config
from agent.identity import CertificateExpired, JoinError
from agent.sync import Revoked
from shared.errors import first_error
from shared.join import parse_join_string


@click.group()
def main() -> None:
    """The gpuctl host agent: detects this host's accelerators and runs the work the coordinator assigns."""


_run_options = [
    click.option(
        "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG, show_default=True
    ),
    click.option(
        "--coordinator",
        multiple=True,
        help="The coordinator's https:// URL (repeat for each replica, the preferred first).",
    ),
    click.option("--state-dir", type=click.Path(path_type=Path)),
    click.option("--name", help="This host's name (default: its hostname)."),
    click.option("--blocks", help="auto, or N blocks (N must divide the GPU count)."),
    click.option("--simulate", help="Declare simulated GPUs instead of detecting, e.g. 8xH100:80GB."),
    click.option(
        "--bastion",
        multiple=True,
        metavar="[USER@]HOST[:PORT]",
        help="Reach the coordinator through this SSH bastion (repeat for each hop, first hop first).",
    ),
    click.option("--bastion-identity", metavar="FILE", help="The private key for the bastions."),
    click.option(
        "--bastion-known-hosts", metavar="FILE", help="The bastions' host keys (required with --bastion)."
    ),
    click.option(
        "--proxy",
        metavar="URL",
        help="An HTTP CONNECT proxy (default: HTTPS_PROXY / NO_PROXY); none: no proxy.",
    ),
    click.option("-v", "--verbose", is_flag=True),
]


def run_options(f):
    for option in reversed(_run_options):
        f = option(f)
    return f


@main.command()
@run_options
def run(config_path: Path, verbose: bool, **overrides: object) -> None:
    """Run the agent in the foreground (systemd runs this)."""
    serve(config_path, verbose, overrides)


@main.command("join")
@click.argument("join_string")
@click.option(
    "--no-run",
    is_flag=True,
    help="Enroll and exit once joined (then `systemctl enable --now gpuctl-agent`), instead of running.",
)
@run_options
def join_cmd(join_string: str, no_run: bool, config_path: Path, verbose: bool, **overrides: object) -> None:
    """Join a coordinator with the string `gpuctl token create` printed, then run (or exit: --no-run)."""
    if no_run:
        enroll_only(config_path, verbose, {**overrides, "join": join_string})
    else:
        serve(config_path, verbose, {**overrides, "join": join_string})


def enroll_only(config_path: Path, verbose: bool, overrides: dict[str, object]) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = load_config(config_path, overrides)
        parse_join_string(str(config.join))
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        host_id = asyncio.run(enroll(config))
    except Exception as exc:
        error = first_error(exc)
        if isinstance(error, ConfigError | OSError | JoinError | ApiError):
            raise click.ClickException(str(error)) from None
        raise
    if host_id is None:
        click.echo(f"already joined (a certificate is in {config.pki_dir}); nothing sent")
    else:
        click.echo(f"joined as host {host_id}")
    click.echo("next: systemctl enable --now gpuctl-agent")


def serve(config_path: Path, verbose: bool, overrides: dict[str, object]) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = load_config(config_path, overrides)
        if config.join:
            parse_join_string(config.join)
        inventory = detect(config)
    except (ConfigError, BlocksError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        asyncio.run(run_agent(config, inventory))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        error = first_error(exc)
        if isinstance(error, Revoked):
            click.echo(
                f"gpuctl-agent: the coordinator refused this host: {error}; its jobs were stopped and no more work is pulled",
                err=True,
            )
            sys.exit(3)
        if isinstance(error, ConfigError | OSError | JoinError | CertificateExpired | ApiError):
            raise click.ClickException(str(error)) from None
        raise


@main.command()
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG, show_default=True
)
@click.option("--blocks", help="auto, or N blocks.")
@click.option("--simulate", help="Declare simulated GPUs, e.g. 8xH100:80GB.")
def detect_cmd(config_path: Path, **overrides: object) -> None:
    """Print what this host has, cut into blocks, as JSON (no coordinator needed)."""
    import msgspec

    try:
        config = load_config(config_path, {"coordinator": "https://unused.invalid", **overrides})
        inventory = detect(config)
    except (ConfigError, BlocksError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(msgspec.json.format(msgspec.json.encode(inventory)).decode())


detect_cmd.name = "detect"


@main.command()
def metrics() -> None:
    """Print a live reading of every accelerator (utilization, memory used, temperature, power) as JSON."""
    import msgspec

    from agent.detect import read_metrics

    click.echo(msgspec.json.format(msgspec.json.encode(read_metrics())).decode())
