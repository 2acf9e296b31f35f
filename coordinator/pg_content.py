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

import psycopg

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


def connect(url: str) -> psycopg.Connection:
    """A connection in autocommit: each statement commits unless a `with conn.transaction()` holds it."""
    return psycopg.connect(url, autocommit=True)


def ensure_schema(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for statement in SCHEMA:
            conn.execute(statement)


class Connection:
    """One connection, opened again on the next call after PostgreSQL dropped it (a restart, a failover):
    the call that saw it drop fails, as a write to a full disk does, and the sender tries again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = connect(url)
        ensure_schema(self._conn)

    def get(self) -> psycopg.Connection:
        if self._conn.closed:
            self._conn = connect(self.url)
        return self._conn

    def close(self) -> None:
        self._conn.close()
