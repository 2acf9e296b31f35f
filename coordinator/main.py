"""`gpuctl-coordinator`: the server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import click
import yaml

from coordinator.backup import BackupError, backup, restore
from coordinator.cluster_keys import KeyMismatch
from coordinator.db import SQLITE_PREFIX, BadDatabase, redacted
from coordinator.disk_settings import LIMIT_SETTINGS, limit_settings
from coordinator.lease_settings import LEASE_SETTINGS, duration_setting, lease_settings
from coordinator.migrate_to import MigrateError, migrate_to
from coordinator.pki import ensure_pki
from coordinator.readings import READINGS_SETTINGS, readings_settings
from coordinator.secrets import ensure_key
from coordinator.server import ServerConfig, ensure_admin_token, start_coordinator
from coordinator.service import Settings
from coordinator.store import Store
from coordinator.submit_rules import DEFAULT_PYTHON_IMAGE
from coordinator.usage import QUEUE_SETTINGS, queue_settings
from shared import gc_settings, tls
from shared.constants import DEFAULT_PORT
from shared.coordinators import parse_coordinators
from shared.sdnotify import notify
from shared.state_lock import StateDirBusy

DEFAULT_CONFIG = Path("/etc/gpuctl/coordinator.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/gpuctl-coordinator")


def _load(
    config_path: Path,
    state_dir: Path | None,
    port: int | None,
    host: str | None,
    database: str | None = None,
) -> ServerConfig:
    raw: dict = {}
    if config_path.exists():
        try:
            raw = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{config_path}: invalid YAML: {exc}".replace("\n", " ")) from None
    known = {
        "state_dir",
        "database",
        "port",
        "host",
        "server_names",
        "python_image",
        "advertise_urls",
        *LIMIT_SETTINGS,
        *LEASE_SETTINGS,
        *QUEUE_SETTINGS,
        *READINGS_SETTINGS,
    }
    unknown = set(raw) - known
    if unknown:
        raise click.ClickException(
            f"{sorted(unknown)[0]}: unknown setting (known: {', '.join(sorted(known))})"
        )
    return ServerConfig(
        state_dir=state_dir or Path(raw.get("state_dir", DEFAULT_STATE_DIR)),
        host=host or raw.get("host", "0.0.0.0"),
        port=port or int(raw.get("port", DEFAULT_PORT)),
        server_names=tuple(raw.get("server_names", ())),
        settings=_settings(raw),
        database=database or _database(raw.get("database", "")),
    )


def _database(value: object) -> str:
    """The `database` setting: a URL, checked when the store opens it (coordinator/db)."""
    if not isinstance(value, str):
        raise click.ClickException(
            f"database: expected sqlite:///ABSOLUTE/PATH or postgresql://..., got {value!r}"
        )
    return value


def _open_store(config: ServerConfig) -> Store:
    try:
        return Store(config.store_at)
    except BadDatabase as exc:
        raise click.ClickException(str(exc)) from None


def _settings(raw: dict) -> Settings:
    python_image = _python_image(raw.get("python_image", DEFAULT_PYTHON_IMAGE))
    try:
        advertised = (
            parse_coordinators(raw["advertise_urls"], "advertise_urls") if "advertise_urls" in raw else ()
        )
        base = limit_settings(raw, Settings(python_image=python_image, advertise_urls=advertised))
        return readings_settings(raw, queue_settings(raw, lease_settings(raw, base)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _python_image(value: object) -> str:
    """The `python_image` setting: an image reference in which `{version}` stands for the job's `python:`."""
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise click.ClickException(
            f"python_image: expected an image like python:{{version}}-slim, got {value!r}"
        )
    return value


_config = click.option("--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG)
_state_dir = click.option("--state-dir", type=click.Path(path_type=Path))
_database_option = click.option(
    "--database", help="sqlite:///ABSOLUTE/PATH or postgresql://... (overrides the config)."
)
_options = [
    _config,
    _state_dir,
    click.option("--port", type=int),
    click.option("--host", help="Address to listen on."),
    _database_option,
]


def _with_options(f):
    for option in reversed(_options):
        f = option(f)
    return f


@click.group()
def main() -> None:
    """The gpuctl coordinator."""


@main.command()
@_with_options
def init(
    config_path: Path, state_dir: Path | None, port: int | None, host: str | None, database: str | None
) -> None:
    """Create the CA, the server certificate and the admin token. Re-running changes nothing."""
    config = _load(config_path, state_dir, port, host, database)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # its database holds jobs' secrets
    names = list(config.server_names) or _default_names()
    paths = ensure_pki(config.state_dir, names)
    store = _open_store(config)
    token = ensure_admin_token(store, config.state_dir / "admin-token")
    store.close()
    ensure_key(config.state_dir)  # project secrets are encrypted with it
    pin = tls.ca_pin(paths.ca_cert.read_bytes())
    click.echo(f"CA certificate: {paths.ca_cert}")
    click.echo(f"CA pin:         {pin}")
    click.echo(f"admin token:    {token}")
    click.echo("on a user's machine (after `gpuctl-coordinator run`):")
    urls = " ".join(config.settings.advertise_urls) or _url(names, config.port)
    click.echo(f"  gpuctl login {urls} --token {token} --ca-pin {pin}")


def _url(server_names: list[str], port: int) -> str:
    """The URL a user's machine would dial: the first server name that is not this machine's loopback."""
    remote = [n for n in server_names if n not in ("localhost", "127.0.0.1", "::1")]
    name = (remote or server_names)[0]
    return f"https://{f'[{name}]' if ':' in name else name}:{port}"


def _default_names() -> list[str]:
    from coordinator.pki import default_server_names

    return default_server_names()


@main.command()
@_with_options
@click.option("-v", "--verbose", is_flag=True)
@click.option("--unreachable-after", help="A host silent this long takes no new work (overrides the config).")
@click.option("--lost-after", help="A host silent this long loses its allocations (overrides the config).")
def run(
    config_path: Path,
    state_dir: Path | None,
    port: int | None,
    host: str | None,
    database: str | None,
    verbose: bool,
    unreachable_after: str | None,
    lost_after: str | None,
) -> None:
    """Run the coordinator in the foreground (systemd runs this)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config = _load(config_path, state_dir, port, host, database)
    settings = config.settings
    try:
        if unreachable_after:
            value = duration_setting("--unreachable-after", unreachable_after)
            settings = dataclasses.replace(settings, unreachable_after_s=value)
        if lost_after:
            settings = dataclasses.replace(
                settings, lost_after_s=duration_setting("--lost-after", lost_after)
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    config = dataclasses.replace(config, settings=settings)

    async def serve() -> None:
        running = await start_coordinator(config)
        ensure_admin_token(running.coordinator.store, config.state_dir / "admin-token")
        gc_settings.for_many_connections()
        notify("READY=1")  # listening: systemd may start what comes after it
        try:
            await asyncio.Event().wait()
        finally:
            await running.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except (BadDatabase, KeyMismatch, StateDirBusy) as exc:
        raise click.ClickException(str(exc)) from None


def _sqlite_file(config: ServerConfig) -> Path:
    """The SQLite file that `backup` and `restore` copy; PostgreSQL has its own tools."""
    if isinstance(config.store_at, Path):
        return config.store_at
    if config.store_at.startswith(SQLITE_PREFIX):
        return Path(config.store_at[len(SQLITE_PREFIX) :])
    raise click.ClickException(
        "database: backup and restore copy SQLite's state; back up PostgreSQL with pg_dump and pg_restore "
        "(README: Backup and restore)"
    )


@main.command(name="backup")
@click.argument("file", type=click.Path(path_type=Path))
@_config
@_state_dir
@_database_option
def backup_command(file: Path, config_path: Path, state_dir: Path | None, database: str | None) -> None:
    """Copy the state (database, logs, file archives, keys) into FILE, a tar.gz, while the coordinator runs."""
    config = _load(config_path, state_dir, None, None, database)
    try:
        summary = backup(config.state_dir, file, _sqlite_file(config))
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"backed up {config.state_dir} to {file}: schema version {summary.schema_version}, "
        f"{summary.files} files, {summary.size_bytes / 2**20:.1f} MiB"
    )


@main.command(name="restore")
@click.argument("file", type=click.Path(path_type=Path))
@_config
@_state_dir
@_database_option
@click.option("--force", is_flag=True, help="Replace what the state dir holds.")
def restore_command(
    file: Path, config_path: Path, state_dir: Path | None, database: str | None, force: bool
) -> None:
    """Put a backup made by `backup` into the state dir of a stopped coordinator."""
    config = _load(config_path, state_dir, None, None, database)
    try:
        summary = restore(file, config.state_dir, force, _sqlite_file(config))
    except (BackupError, StateDirBusy) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"restored {file} into {config.state_dir}: schema version {summary.schema_version}, "
        f"{summary.files} files; start the coordinator there"
    )


@main.command()
@_config
@_state_dir
@_database_option
@click.option("--to", "to_url", help="Copy this SQLite state into an empty PostgreSQL (postgresql://...).")
def migrate(config_path: Path, state_dir: Path | None, database: str | None, to_url: str | None) -> None:
    """Bring the database's schema to this release's version (`run` does too, at start); prints it.
    Refuses a schema newer than this release's. With --to: copy the stopped coordinator's whole state
    (jobs, logs, archives) into an empty PostgreSQL database, for coordinators to run from."""
    config = _load(config_path, state_dir, None, None, database)
    if to_url is not None:
        _migrate_to(config, to_url)
        return
    if not config.database:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = _open_store(config)
    try:
        click.echo(
            f"{store.kind} database {redacted(store.database_url)}: schema version {store.schema_version}"
        )
    finally:
        store.close()


def _migrate_to(config: ServerConfig, to_url: str) -> None:
    try:
        copied = migrate_to(config.state_dir, config.store_at, to_url)
    except (MigrateError, BadDatabase, StateDirBusy) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"copied {copied.rows} rows of {copied.tables} tables, {copied.log_bytes} log bytes and "
        f"{copied.archives} file archives into {redacted(to_url)}; set `database: {redacted(to_url)}` "
        "in coordinator.yaml and start the coordinators"
    )
