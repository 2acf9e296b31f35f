"""Log chunks and file archives in PostgreSQL, beside the store's tables, so that coordinators sharing a
database need no shared filesystem and one `pg_dump` backs up everything.

Both are plain tables of chunks (bytea rows of at most a few hundred KiB), not large objects: rows are
deleted with the archive they belong to in one statement (a large object outlives its row until someone
calls lo_unlink), logical replication and `pg_dump --table` carry them like any other row, and an upload in
progress is an open transaction, so a coordinator that dies mid-upload leaves nothing behind.

The tables belong to these stores alone (the SQLite default keeps files under the state dir), so they are
created here, once, by whichever coordinator opens the database first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")
CONNECT_TIMEOUT_S = 10  # a database that does not answer fails the call rather than hold the loop for minutes

SCHEMA_LOCK = 0x67707563  # pg_advisory_xact_lock key: replicas starting together create the tables once
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS log_chunks (
        alloc_id TEXT NOT NULL,
        byte_offset BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (alloc_id, byte_offset)
    )""",
    """CREATE TABLE IF NOT EXISTS file_archives (
        id TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        stored_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS file_chunks (
        archive_id TEXT NOT NULL,
        byte_offset BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (archive_id, byte_offset)
    )""",
]


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection in autocommit: each statement commits unless a `with conn.transaction()` holds it."""
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for statement in SCHEMA:
            conn.execute(statement)


class Connection:
    """One connection, opened again when PostgreSQL dropped it (a restart, a failover)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = connect(url)
        self._reconnecting = threading.Lock()  # the archive store runs calls from threads too
        ensure_schema(self._conn)

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`work` on the connection, and once more on a new one if the first found it dropped: every call
        of the stores is safe to repeat (an append by offset, a read, a prune), so a failover goes unseen."""
        try:
            return work(self._conn)
        except psycopg.OperationalError:
            if not self._conn.closed:
                raise
        with self._reconnecting:
            if self._conn.closed:
                self._conn = connect(self.url)
        return work(self._conn)

    def close(self) -> None:
        self._conn.close()
