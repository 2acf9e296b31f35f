"""`gpuctl-coordinator migrate --to postgresql://...`: an SQLite coordinator's state, copied into an empty
PostgreSQL database, from which one or several coordinators then run.

The source is brought to this release's schema first (as `run` would), and the target made at the same
version by opening the store on it, so the two have the same tables and columns. Every table is copied in
the order of its foreign keys, ids as they are; the identity counters (a job's `seq`, the audit log's `id`)
are set past the highest number SQLite ever gave, so no number is given twice. Logs and file archives go
into their chunk tables (coordinator/pg_content.py). All of it is one transaction: a copy that fails leaves
the target as empty as it found it, and may be run again.

The coordinator must be stopped (its state dir's lock is held meanwhile): what it changed after the copy
would be lost when the coordinators start on PostgreSQL.
"""

from __future__ import annotations

import graphlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from coordinator.db import POSTGRES_PREFIXES, redacted
from coordinator.pg_content import Connection as ContentConnection
from coordinator.pg_files import ROW_BYTES
from coordinator.server import LOCK_FILE
from coordinator.store import Store
from shared import constants as C
from shared.state_lock import hold_state_dir

NOT_COPIED = {"sqlite_sequence", "schema_version"}  # SQLite's own; the target's version is made at open
CONTENT_TABLES = ("log_chunks", "file_archives", "file_chunks")
IN_USE = ("jobs", "hosts", "tokens", *CONTENT_TABLES)  # rows in any: a coordinator used this database


class MigrateError(Exception):
    """The copy was refused or failed; one line naming what."""


@dataclass(frozen=True)
class Copied:
    tables: int
    rows: int
    log_bytes: int
    archives: int


def migrate_to(state_dir: Path, source: Path | str, target_url: str) -> Copied:
    """Copy the coordinator's state (`source`: its SQLite store, `state_dir`: its logs and archives) into
    the empty PostgreSQL database at `target_url`."""
    if not target_url.startswith(POSTGRES_PREFIXES):
        raise MigrateError(f"--to: expected postgresql://..., got {redacted(target_url)!r}")
    with hold_state_dir(state_dir, LOCK_FILE, "gpuctl-coordinator"):
        source_store = Store(source)
        try:
            if source_store.kind != "sqlite":
                raise MigrateError(f"database: the source must be SQLite, not {source_store.kind}")
            Store(target_url).close()  # the schema, at this release's version
            ContentConnection(target_url).close()  # and the chunk tables
            assert isinstance(source_store.db, sqlite3.Connection)
            with psycopg.connect(target_url) as target:  # one transaction, committed as the block ends
                return _copy(source_store.db, target, state_dir, target_url)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MigrateError(f"--to: {redacted(target_url)}: {reason}") from None
        finally:
            source_store.close()


def _copy(source: sqlite3.Connection, target: psycopg.Connection[Any], state_dir: Path, url: str) -> Copied:
    for table in IN_USE:
        if target.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone() is not None:
            raise MigrateError(
                f"--to: {redacted(url)} is not empty (table {table} has rows); give an empty database"
            )
    tables = _in_dependency_order(source)
    quoted = ", ".join(f'"{table}"' for table in tables)
    target.execute(f"TRUNCATE {quoted}")  # the rows migrations seed (the default project)
    rows = sum(_copy_table(source, target, table) for table in tables)
    _advance_identities(source, target)
    log_bytes = _copy_logs(target, state_dir / "logs")
    archives = _copy_archives(target, state_dir / "files")
    return Copied(len(tables), rows, log_bytes, archives)


def _in_dependency_order(source: sqlite3.Connection) -> list[str]:
    """The store's tables, each after those its foreign keys name."""
    names = [
        row[0]
        for row in source.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        if row[0] not in NOT_COPIED
    ]
    graph = {name: {row[2] for row in source.execute(f'PRAGMA foreign_key_list("{name}")')} for name in names}
    return list(graphlib.TopologicalSorter(graph).static_order())


def _copy_table(source: sqlite3.Connection, target: psycopg.Connection[Any], table: str) -> int:
    columns = [row[1] for row in source.execute(f'PRAGMA table_info("{table}")')]
    names = ", ".join(f'"{column}"' for column in columns)
    copied = 0
    with target.cursor().copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
        for row in source.execute(f'SELECT {names} FROM "{table}"'):
            copy.write_row(tuple(row))
            copied += 1
    return copied


def _advance_identities(source: sqlite3.Connection, target: psycopg.Connection[Any]) -> None:
    """Each identity counter past the highest number SQLite gave (`sqlite_sequence` keeps it, deleted rows
    included), or past the highest copied."""
    given = dict(source.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    identities = target.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    for table, column in identities:
        [(highest,)] = target.execute(f'SELECT max("{column}") FROM "{table}"').fetchall()
        last = max(int(given.get(table) or 0), int(highest or 0))
        if last > 0:
            target.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s)", (table, column, last))


def _copy_logs(target: psycopg.Connection[Any], logs: Path) -> int:
    total = 0
    for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        alloc_id = path.name.removesuffix(".log")
        total += _copy_chunks(target, "log_chunks", "alloc_id", alloc_id, path, C.LOG_CHUNK_MAX_BYTES)
    return total


def _copy_archives(target: psycopg.Connection[Any], files: Path) -> int:
    copied = 0
    for path in sorted(files.glob("*.tar.gz")) if files.is_dir() else []:
        archive_id = path.name.removesuffix(".tar.gz")
        size = _copy_chunks(target, "file_chunks", "archive_id", archive_id, path, ROW_BYTES)
        target.execute(
            "INSERT INTO file_archives (id, size, stored_at) VALUES (%s, %s, %s)",
            (archive_id, size, path.stat().st_mtime),  # its age: the next prune judges it as before
        )
        copied += 1
    return copied


def _copy_chunks(
    target: psycopg.Connection[Any], table: str, key: str, value: str, path: Path, row_bytes: int
) -> int:
    offset = 0
    with (
        open(path, "rb") as f,
        target.cursor().copy(f"COPY {table} ({key}, byte_offset, data) FROM STDIN") as copy,
    ):
        while data := f.read(row_bytes):
            copy.write_row((value, offset, data))
            offset += len(data)
    return offset
