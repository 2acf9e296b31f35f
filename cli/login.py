"""`gpuctl login URL --token T --ca-pin sha256:...`: the CLI's config for a real coordinator.

The coordinator's CA is fetched without trusting it (the unauthenticated `GET /agent/v1/ca` that joining
agents use) and kept only if its public key matches the pin that `gpuctl-coordinator init` and `gpuctl
token create` print. Nothing secret is sent before that check; the token is then tried with one cheap
authenticated call, and only then are the CA and the config (0600) written."""

from __future__ import annotations

import http.client
import ssl
import tempfile
import urllib.parse
from pathlib import Path

import click

from cli.api import Api, ApiError
from cli.config import CliConfig, config_path, save_cli_config
from shared import tls
from shared.constants import AGENT_PREFIX

FETCH_TIMEOUT_S = 30.0


class LoginError(Exception):
    """One line: why the config was not written."""


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
        raise LoginError(f"cannot reach the coordinator at {url}: {exc}") from None
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


def login(url: str, token: str, pin: str, path: Path) -> Path:
    """Check the CA against the pin and the token against the coordinator, then write the CA beside the
    config and the config at `path`. Writes nothing when a check fails. Idempotent."""
    url = url.rstrip("/")
    if urllib.parse.urlsplit(url).scheme != "https":
        raise LoginError(f"the coordinator's URL must be https://, got {url!r}")
    if not pin.startswith("sha256:"):
        raise LoginError(f"--ca-pin: expected sha256:<hex>, as `gpuctl-coordinator init` prints, got {pin!r}")
    ca_pem = fetch_pinned_ca(url, pin)
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


@click.command("login")
@click.argument("url")
@click.option("--token", required=True, help="Your API token (the admin token, or `gpuctl user create`'s).")
@click.option("--ca-pin", "pin", required=True, help="sha256:<hex> of the coordinator's CA, as init prints.")
def login_command(url: str, token: str, pin: str) -> None:
    """Point this CLI at a coordinator: check its CA against the pin, try the token, write the config."""
    try:
        path = login(url, token, pin, config_path())
    except LoginError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"logged in to {url}; config written to {path}")
