"""Where a coordinator keeps log bytes and file archives: beside its store. With PostgreSQL, in the same
database (coordinator/pg_content.py), so replicas share them and need no shared filesystem; with SQLite,
as files under the state dir, which `gpuctl-coordinator backup` copies with the database."""

from __future__ import annotations

from pathlib import Path

from coordinator.db import POSTGRES_PREFIXES
from coordinator.filestore import Archives, FileStore
from coordinator.logstore import Logs, LogStore


def open_content(state_dir: Path, database_url: str | None) -> tuple[Logs, Archives]:
    """The log store and the archive store of a coordinator whose store is at `database_url`."""
    if database_url is not None and database_url.startswith(POSTGRES_PREFIXES):
        from coordinator.pg_files import PgFileStore  # psycopg only where PostgreSQL is used
        from coordinator.pg_logs import PgLogStore

        return PgLogStore(database_url), PgFileStore(database_url)
    return LogStore(state_dir / "logs"), FileStore(state_dir / "files")
