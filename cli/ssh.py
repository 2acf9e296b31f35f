"""`gpuctl ssh`, `gpuctl ssh-proxy` and `gpuctl ssh-config`: the real OpenSSH client (so `ssh`, `scp`,
`rsync` and VS Code's Remote-SSH all work) into a running dev environment, through the coordinator and its
channel to the job's agent: no route to the GPU host is needed.

ssh's `ProxyCommand` is gpuctl itself (`gpuctl ssh-proxy JOB`), which carries ssh's bytes over one stream to
the job's sshd. The CLI keeps its own key pair in its config folder (`ssh/id_ed25519`, made on first use);
each connection hands the public key to the coordinator, which lets only members of the job's project (and
admins) through, and the job's agent adds it to the job's `authorized_keys` before it connects. The job's
host key is never taken on first sight: the coordinator derives it from the job's seed as the agent does,
and the CLI pins it in its own `ssh/known_hosts` under the job's alias, `gpuctl-JOB_ID`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import urllib.parse
from pathlib import Path

import click

from cli.api import ApiError
from cli.config import config_path
from shared.wire import SshHost

KEY = "id_ed25519"
KNOWN_HOSTS = "known_hosts"


def ssh_folder() -> Path:
    """The CLI's ssh folder, beside its config."""
    return config_path().parent / "ssh"


def ensure_key(folder: Path) -> str:
    """The CLI's public key ("ssh-ed25519 AAAA..."), its key pair made on first use (0600 private key)."""
    public = folder / f"{KEY}.pub"
    if public.exists():
        return " ".join(public.read_text().split()[:2])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    text = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    descriptor = os.open(folder / KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(private)
    public.write_text(text.decode() + " gpuctl\n")
    return text.decode()


def alias(host: SshHost) -> str:
    return f"gpuctl-{host.job_id}"


def pin_host(folder: Path, host: SshHost) -> Path:
    """The job's host key in the CLI's known_hosts, under the job's alias (any other key for it dropped)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / KNOWN_HOSTS
    name = alias(host)
    kept = [line for line in _lines(path) if line.split(" ", 1)[0] != name]
    path.write_text("".join(f"{line}\n" for line in [*kept, f"{name} {host.host_key}"]))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def gpuctl_argv() -> list[str]:
    """How to run this gpuctl again (ssh's ProxyCommand): the frozen binary, the installed script, or this
    interpreter with this package."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    script = Path(sys.argv[0])
    if script.name == "gpuctl" and os.access(script, os.X_OK):
        return [str(script.resolve())]
    return [sys.executable, "-c", "from cli.main import main; main()"]


def ssh_options(host: SshHost, folder: Path) -> dict[str, str]:
    """ssh's options for the job: its ProxyCommand, the CLI's key only, and its pinned host key."""
    proxy = shlex.join([*gpuctl_argv(), "ssh-proxy", host.job_id]).replace("%", "%%")
    return {
        "HostName": alias(host),
        "User": host.user,
        "ProxyCommand": proxy,
        "IdentityFile": _path(folder / KEY),
        "IdentitiesOnly": "yes",
        "HostKeyAlias": alias(host),
        "UserKnownHostsFile": _path(folder / KNOWN_HOSTS),
        "StrictHostKeyChecking": "yes",
        "CheckHostIP": "no",
        "ServerAliveInterval": "30",
    }


def _path(path: Path) -> str:
    """A path as ssh reads it whole, in its config and its -o options alike: quoted (a home folder may have
    a space), and its `%` doubled (ssh expands %-tokens in both of these options)."""
    return '"' + str(path).replace("%", "%%") + '"'


def _prepare(job: str) -> tuple[SshHost, Path]:
    """The job's login, the CLI's key made and the job's host key pinned. Raises ClickException."""
    from cli.session import call

    host = call(lambda client: client.ssh_host(job))
    folder = ssh_folder()
    ensure_key(folder)
    pin_host(folder, host)
    return host, folder


@click.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("job")
@click.argument("command", nargs=-1)
def ssh_command(job: str, command: tuple[str, ...]) -> None:
    """Log in to a running dev environment with OpenSSH's ssh (in its container, or as its user), or run
    COMMAND there: `gpuctl ssh JOB -- nvidia-smi`. Exits with ssh's exit code (the command's)."""
    host, folder = _prepare(job)
    options = [f"-o{name}={value}" for name, value in ssh_options(host, folder).items()]
    try:
        os.execvp("ssh", ["ssh", *options, alias(host), *command])
    except OSError as exc:
        raise click.ClickException(f"cannot run ssh (openssh-client): {exc.strerror}") from None


@click.command("ssh-config")
@click.argument("job")
def ssh_config(job: str) -> None:
    """Print a Host block for ~/.ssh/config, so that `ssh gpuctl-JOB_ID`, `scp` and VS Code's Remote-SSH
    reach the dev environment. The job's host key is pinned meanwhile."""
    host, folder = _prepare(job)
    lines = [f"Host {alias(host)}", *(f"    {k} {v}" for k, v in ssh_options(host, folder).items())]
    click.echo("\n".join(lines))


@click.command("ssh-proxy")
@click.argument("job")
def ssh_proxy(job: str) -> None:
    """ssh's ProxyCommand (`gpuctl ssh` and `gpuctl ssh-config` set it): carries stdin and stdout to the
    dev environment's sshd."""
    from cli.config import NoConfig, load_cli_config
    from cli.remote import carry, stderr_say

    try:
        config = load_cli_config()
    except (NoConfig, ApiError) as exc:
        raise click.ClickException(str(exc)) from None
    key = urllib.parse.quote(ensure_key(ssh_folder()), safe="")
    path = f"/jobs/{urllib.parse.quote(job, safe='')}/ssh?key={key}"

    async def run() -> bool:
        reader, writer = await _stdio()
        return await carry(config, path, f"gpuctl ssh {job}", reader, writer, stderr_say)

    sys.exit(0 if asyncio.run(run()) else 255)


async def _stdio() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """This process's stdin and stdout (ssh's pipes) as a stream pair."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)
