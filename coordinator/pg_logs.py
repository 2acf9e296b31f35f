"""Allocation logs as rows of `log_chunks` (coordinator/pg_content.py): one row per stored chunk, keyed by
(allocation, byte offset), so a chunk sent again finds its key taken and lands once.

Same contract as the file store (coordinator/logstore.py): `accepted` decides what to store and what to
acknowledge; an acknowledged byte is committed. An append holds a per-allocation advisory lock for its
transaction, so two coordinators that both receive a chunk of one log (an agent that failed over while
its request was in flight) store it once and answer alike. An append is one short transaction on the
event loop, as the file store's fsync is.
"""

from __future__ import annotations

from typing import Any

import psycopg

from coordinator.logstore import accepted, check_alloc_id
from coordinator.pg_content import Connection

LOG_LOCK_SPACE = 0x6C6F6773  # first key of pg_advisory_xact_lock(int, int); the second: the id's hash
_SIZE = (
    "SELECT byte_offset + length(data) FROM log_chunks WHERE alloc_id = %s ORDER BY byte_offset DESC LIMIT 1"
)
_READ = """SELECT byte_offset, data FROM log_chunks
    WHERE alloc_id = %(id)s AND byte_offset < %(end)s AND byte_offset >= COALESCE(
        (SELECT max(byte_offset) FROM log_chunks WHERE alloc_id = %(id)s AND byte_offset <= %(offset)s), 0)
    ORDER BY byte_offset"""


class PgLogStore:
    def __init__(self, database_url: str) -> None:
        self.conn = Connection(database_url)

    def size(self, alloc_id: str) -> int:
        check_alloc_id(alloc_id)
        return self.conn.run(lambda conn: _size(conn, alloc_id))

    def append(self, alloc_id: str, offset: int, data: bytes, cap: int = 0) -> int:
        """Store `data` found at `offset` of the allocation's log; answer the acknowledged size (`accepted`)."""
        check_alloc_id(alloc_id)
        return self.conn.run(lambda conn: _append(conn, alloc_id, offset, data, cap))

    def read(self, alloc_id: str, offset: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` from `offset`: the chunks that cover them, cut to the range."""
        params = {"id": check_alloc_id(alloc_id), "offset": offset, "end": offset + max_bytes}
        rows = self.conn.run(lambda conn: conn.execute(_READ, params).fetchall())
        if not rows:
            return b""
        first = rows[0][0]
        return b"".join(row[1] for row in rows)[offset - first : offset - first + max_bytes]

    def close(self) -> None:
        self.conn.close()


def _append(conn: psycopg.Connection[Any], alloc_id: str, offset: int, data: bytes, cap: int) -> int:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOG_LOCK_SPACE, alloc_id))
        new, acked = accepted(_size(conn, alloc_id), offset, data, cap)
        if new:
            conn.execute(
                "INSERT INTO log_chunks (alloc_id, byte_offset, data) VALUES (%s, %s, %s)",
                (alloc_id, acked - len(new), new),
            )
    return acked


def _size(conn: psycopg.Connection[Any], alloc_id: str) -> int:
    row = conn.execute(_SIZE, (alloc_id,)).fetchone()
    return int(row[0]) if row else 0
