"""`gpuctl login URL... --token T --ca-pin sha256:...`: the CLI's config for a real coordinator (or several
replicas of one, each URL given, the preferred first).

The coordinator's CA is fetched without trusting it (the unauthenticated `GET /agent/v1/ca` that joining
agents use) and kept only if its public key matches the pin that `gpuctl-coordinator init` and `gpuctl
token create` print. Nothing secret is sent before that check; the token is then tried with one cheap
authenticated call, and only then are the CA and the config (0600) written. With several URLs, every one
that answers must show the pinned CA (the replicas share it); one that does not answer is kept in the list,
since replicas are down at times, but at least one must answer."""

from __future__ import annotations

import http.client
import ssl
import tempfile
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import click

from cli.api import Api, ApiError
from cli.config import CliConfig, config_path, save_cli_config
from shared import tls
from shared.constants import AGENT_PREFIX
from shared.coordinators import parse_coordinators

FETCH_TIMEOUT_S = 30.0


class LoginError(Exception):
    """One line: why the config was not written."""


class LoginUnreachable(LoginError):
    """The coordinator did not answer."""


def fetch_pinned_ca(url: str, pin: str) -> bytes:
    """The coordinator's CA certificate (PEM), if its public key's sha256 is `pin`. Sends no secret."""
    parsed = urllib.parse.urlsplit(url)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to read the CA, which the pin then verifies
    conn = http.client.HTTPSConnection(
        parsed.hostname or "localhost", parsed.port or 443, context=insecure, timeout=FETCH_TIMEOUT_S
    )
    try:
        conn.request("GET", f"{AGENT_PREFIX}/ca")
        ca_pem = conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        raise LoginUnreachable(f"cannot reach the coordinator at {url}: {exc}") from None
    finally:
        conn.close()
    try:
        actual = tls.ca_pin(ca_pem)
    except ValueError:
        raise LoginError(f"{url} did not answer with a CA certificate; is it a gpuctl coordinator?") from None
    if actual != pin:
        raise LoginError(
            f"the coordinator at {url} has a CA whose pin {actual} is not {pin}: refusing to trust it "
            "(wrong coordinator or pin, or a man in the middle); nothing was written"
        )
    return ca_pem


def login(urls: str | Sequence[str], token: str, pin: str, path: Path) -> Path:
    """Check the CA against the pin and the token against the coordinator, then write the CA beside the
    config and the config at `path`. Writes nothing when a check fails. Idempotent."""
    try:
        checked = parse_coordinators(urls if isinstance(urls, str) else list(urls), "URL")
    except ValueError as exc:
        raise LoginError(f"the coordinator's {exc}") from None
    if not pin.startswith("sha256:"):
        raise LoginError(f"--ca-pin: expected sha256:<hex>, as `gpuctl-coordinator init` prints, got {pin!r}")
    ca_pem = _pinned_ca_of_any(checked, pin)
    url: str | tuple[str, ...] = checked[0] if len(checked) == 1 else checked
    with tempfile.NamedTemporaryFile(suffix=".pem") as trial:
        trial.write(ca_pem)
        trial.flush()
        try:
            Api(CliConfig(url, token, Path(trial.name)), timeout_s=FETCH_TIMEOUT_S).jobs(False)
        except ApiError as exc:
            raise LoginError(f"the coordinator refused the token: {exc}; nothing was written") from None
    ca_file = path.with_name(f"{path.stem}-ca.pem")
    tls.write_private(ca_file, ca_pem)
    return save_cli_config(CliConfig(url, token, ca_file), path)


def _pinned_ca_of_any(urls: tuple[str, ...], pin: str) -> bytes:
    """The pinned CA, from every coordinator that answers (at least one must). Raises LoginError."""
    found: bytes | None = None
    unreachable: list[str] = []
    for url in urls:
        try:
            found = fetch_pinned_ca(url, pin)
        except LoginUnreachable as exc:
            unreachable.append(str(exc))
    if found is None:
        raise LoginError("; ".join(unreachable))
    for line in unreachable:
        click.echo(f"warning: {line}; kept in the list", err=True)
    return found


@click.command("login")
@click.argument("urls", metavar="URL...", nargs=-1, required=True)
@click.option("--token", required=True, help="Your API token (the admin token, or `gpuctl user create`'s).")
@click.option("--ca-pin", "pin", required=True, help="sha256:<hex> of the coordinator's CA, as init prints.")
def login_command(urls: tuple[str, ...], token: str, pin: str) -> None:
    """Point this CLI at a coordinator (several URLs: its replicas, the preferred first): check its CA
    against the pin, try the token, write the config."""
    try:
        path = login(urls, token, pin, config_path())
    except LoginError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"logged in to {' '.join(urls)}; config written to {path}")
