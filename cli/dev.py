"""`gpuctl dev`: a coordinator and an agent for this machine, in one process, with state in a user directory.

It writes the CLI's config, so `gpuctl submit` works at once from another terminal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import click

from agent.agent import detect, run_agent
from agent.blocks import BlocksError
from agent.config import AgentConfig, ConfigError, DockerConfig, default_docker_socket, docker_socket_url
from agent.runtime.engine import ENGINE_ERRORS, PROBE_TIMEOUT_S, EngineUnavailable, connect
from cli.config import CliConfig, save_cli_config
from coordinator.pki import issue_agent_cert
from coordinator.server import RunningCoordinator, ServerConfig, ensure_admin_token, start_coordinator
from shared.constants import DEFAULT_PORT
from shared.errors import first_error


def default_state_dir() -> Path:
    """A user directory; for root, one that the unprivileged job user can reach (jobs never run as root)."""
    if os.geteuid() == 0:
        return Path("/var/lib/gpuctl/dev")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gpuctl" / "dev"


def _docker_socket(flag: str | None) -> str:
    """`--docker-socket` when given, else DOCKER_HOST, else the default socket. Raises ConfigError."""
    return docker_socket_url(flag) if flag else default_docker_socket()


def engine_line(socket_url: str) -> str:
    """Which Docker engine the agent uses, with its version, or why it has none (one line)."""
    try:
        client = connect(socket_url, timeout_s=PROBE_TIMEOUT_S)
    except EngineUnavailable as exc:
        return f"docker: none ({exc}); jobs with image: will not be placed here"
    try:
        version = str(client.version().get("Version", "unknown version"))
    except ENGINE_ERRORS:
        version = "unknown version"
    finally:
        client.close()
    return f"docker: {socket_url} (Docker {version})"


async def start_dev(
    state_dir: Path, port: int, simulate: str | None, blocks: str | int, socket_url: str
) -> tuple[RunningCoordinator, AgentConfig, CliConfig]:
    """Start the coordinator, make the local agent's certificate, write the CLI config. Idempotent on disk.
    Its fleet is a cluster fleet (`placement: cluster`): a multi-node job then waits for a second host, and
    says so, rather than for a setting."""
    running = await start_coordinator(
        ServerConfig(state_dir / "coordinator", "127.0.0.1", port, ("localhost", "127.0.0.1"))
    )
    token = ensure_admin_token(running.coordinator.store, state_dir / "coordinator" / "admin-token")
    accounts = running.coordinator.accounts
    if "default" not in accounts.fleets():  # one machine is one network; an admin's later choice stays
        accounts.set_fleet("default", "cluster", None)
    agent_dir = state_dir / "agent"
    name = socket.gethostname()
    cert, key = issue_agent_cert(running.pki, name, agent_dir / "pki")
    agent = AgentConfig(
        coordinator=running.url,
        state_dir=agent_dir,
        name=name,
        blocks=blocks,
        simulate=simulate,
        ca_file=running.pki.ca_cert,
        cert_file=cert,
        key_file=key,
        docker=DockerConfig(socket=socket_url),
    )
    cli = CliConfig(running.url, token, running.pki.ca_cert)
    return running, agent, cli


@click.command()
@click.option("--simulate-gpus", "simulate", help="Declare simulated GPUs, e.g. 8xH100:80GB (else: detect).")
@click.option("--blocks", default="auto", show_default=True, help="auto, or N blocks.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option(
    "--state-dir", type=click.Path(path_type=Path), default=None, help="Default: ~/.local/state/gpuctl/dev"
)
@click.option(
    "--docker-socket", help="The Docker engine's unix socket (default: $DOCKER_HOST, else the usual one)."
)
@click.option("-v", "--verbose", is_flag=True)
def dev(
    simulate: str | None,
    blocks: str,
    port: int,
    state_dir: Path | None,
    docker_socket: str | None,
    verbose: bool,
) -> None:
    """Run a coordinator and an agent for this machine, ready for `gpuctl submit`."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    state_dir = state_dir or default_state_dir()
    try:
        socket_url = _docker_socket(docker_socket)
        asyncio.run(
            _run(
                state_dir,
                port,
                simulate,
                int(blocks) if blocks.isascii() and blocks.isdigit() else blocks,
                socket_url,
            )
        )
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        error = first_error(exc)
        if isinstance(error, BlocksError | ConfigError | ValueError | OSError):
            raise click.ClickException(str(error)) from None
        raise


async def _run(state_dir: Path, port: int, simulate: str | None, blocks: str | int, socket_url: str) -> None:
    running, agent, cli = await start_dev(state_dir, port, simulate, blocks, socket_url)
    try:
        inventory = detect(agent)
        path = save_cli_config(cli)
        what = f"{len(inventory.gpus)} GPUs" + (" (SIMULATED)" if inventory.simulated else "")
        click.echo(
            f"gpuctl dev: coordinator {running.url}, agent {agent.name} with {what}, {len(inventory.blocks)} blocks"
        )
        click.echo(f"gpuctl dev: {engine_line(socket_url)}")
        click.echo(f"gpuctl dev: CLI config written to {path}; try: gpuctl submit -- echo hello")
        await run_agent(agent, inventory)
    finally:
        await running.close()
