"""The store on SQLite (WAL): one coordinator, one file. `BEGIN IMMEDIATE` makes a transaction the one
writer from its start, so its reads and writes see no other writer's in between; the schema's version is
`PRAGMA user_version`."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from coordinator.db import Connection, sqlite_url


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = sqlite_url(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._writer: sqlite3.Connection | None = None  # for batched writes made off the event loop
        self._writer_lock = threading.Lock()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with _immediate(self.db):
            yield self.db

    def write_batches(self, sql: str, rows: list[tuple[object, ...]], batch: int) -> None:
        """WAL lets the loop's reads go on meanwhile, and a write of the loop's waits at most one batch."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._writer.execute("PRAGMA synchronous=FULL")
            for start in range(0, len(rows), batch):
                with _immediate(self._writer):
                    self._writer.executemany(sql, rows[start : start + batch])

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """Read-only; WAL lets it read while the loop writes."""
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    def migration_lock(self) -> nullcontext[None]:
        return nullcontext()  # one coordinator per file

    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, db: Connection, version: int) -> None:
        db.execute(f"PRAGMA user_version={int(version)}")

    def ddl(self, statement: str) -> str:
        return statement


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
