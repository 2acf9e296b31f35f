"""Job file archives as rows: `file_archives` (id, size, when stored) and their bytes in `file_chunks`
(coordinator/pg_content.py), one row per `ROW_BYTES` piece.

An upload writes its rows under a name of its own inside one open transaction, then, once the bytes are
hashed and admitted, renames them to the archive's id (or drops them, if another upload stored the same
bytes first) and commits: until then no other connection sees them, and a coordinator that dies mid-upload
leaves nothing behind. Each upload has a connection of its own, used from a thread, so the event loop
never waits on it; reads for agents run in threads too. `has` and `prune` are short queries on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import psycopg

from coordinator.filestore import ARCHIVE_ID_RE, TooLarge
from coordinator.pg_content import Connection

ROW_BYTES = 1024 * 1024  # bytes per row of file_chunks: TOASTed out of line, and an agent's read unit


class PgFileStore:
    def __init__(self, database_url: str) -> None:
        self.conn = Connection(database_url)

    def has(self, archive_id: str) -> bool:
        return self.size(archive_id) is not None

    def size(self, archive_id: str) -> int | None:
        """The archive's size in bytes; None if there is no such archive (or the id is not one)."""
        if not ARCHIVE_ID_RE.match(archive_id):
            return None
        query = "SELECT size FROM file_archives WHERE id = %s"
        row = self.conn.run(lambda conn: conn.execute(query, (archive_id,)).fetchone())
        return int(row[0]) if row else None

    async def chunks(self, archive_id: str) -> AsyncIterator[bytes]:
        """The archive's bytes in order, a row at a time, each read in a thread."""
        offsets = await asyncio.to_thread(self.conn.run, lambda conn: _offsets(conn, archive_id))
        for offset in offsets:
            row = await asyncio.to_thread(
                self.conn.run, functools.partial(_row, archive_id=archive_id, offset=offset)
            )
            if row is None:
                return  # pruned while it was being sent: the agent's hash check refuses the short archive
            yield row

    def prune(self, keep: set[str], older_than: float) -> list[str]:
        """Delete the archives not in `keep` stored (or uploaded again) before `older_than`, a timestamp;
        answers the ids deleted."""
        return self.conn.run(lambda conn: _prune(conn, keep, older_than))

    async def put(
        self, chunks: AsyncIterable[bytes], max_bytes: int, admit: Callable[[str, int], None] | None = None
    ) -> str:
        """Store the bytes of `chunks`; answer their id. Raises TooLarge past `max_bytes`, or what `admit(id,
        size)` raises once the bytes are in (a quota); either way nothing is stored."""
        upload = await asyncio.to_thread(_Upload, self.conn.url)
        try:
            async for piece in _pieces(chunks, ROW_BYTES):
                if upload.size + len(piece) > max_bytes:
                    raise TooLarge(f"the archive is over {max_bytes // (1024 * 1024)} MiB")
                await asyncio.to_thread(upload.write, piece)
            archive_id = upload.digest.hexdigest()
            if admit is not None:
                admit(archive_id, upload.size)
            await asyncio.to_thread(upload.commit, archive_id)  # committed before it is acknowledged
            return archive_id
        finally:
            await asyncio.to_thread(upload.close)

    def close(self) -> None:
        self.conn.close()


class _Upload:
    """One upload's rows, under a name of its own, in the transaction its connection opens with the first
    row and leaves open until `commit`; closing the connection without it rolls everything back."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url)  # not in autocommit: the first statement opens the transaction
        self.name = f"upload-{secrets.token_hex(8)}"
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, piece: bytes) -> None:
        self.conn.execute(
            "INSERT INTO file_chunks (archive_id, byte_offset, data) VALUES (%s, %s, %s)",
            (self.name, self.size, piece),
        )
        self.digest.update(piece)
        self.size += len(piece)

    def commit(self, archive_id: str) -> None:
        """Rename the rows to the archive's id, or drop them if it is stored already (then it is renewed:
        an upload of the same bytes just before a submit keeps the archive from the next prune)."""
        now = time.time()
        stored = self.conn.execute(
            "INSERT INTO file_archives (id, size, stored_at) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (archive_id, self.size, now),
        )
        if stored.rowcount:
            rename = "UPDATE file_chunks SET archive_id = %s WHERE archive_id = %s"
            self.conn.execute(rename, (archive_id, self.name))
        else:
            self.conn.execute("DELETE FROM file_chunks WHERE archive_id = %s", (self.name,))
            self.conn.execute("UPDATE file_archives SET stored_at = %s WHERE id = %s", (now, archive_id))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


async def _pieces(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """The bytes of `chunks` again, in pieces of `size` bytes (the last one shorter)."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _prune(conn: psycopg.Connection[Any], keep: set[str], older_than: float) -> list[str]:
    with conn.transaction():
        old = conn.execute("SELECT id FROM file_archives WHERE stored_at < %s", (older_than,)).fetchall()
        removed = sorted(row[0] for row in old if row[0] not in keep)
        if removed:
            conn.execute("DELETE FROM file_chunks WHERE archive_id = ANY(%s)", (removed,))
            conn.execute("DELETE FROM file_archives WHERE id = ANY(%s)", (removed,))
    return removed


def _offsets(conn: psycopg.Connection[Any], archive_id: str) -> list[int]:
    rows = conn.execute(
        "SELECT byte_offset FROM file_chunks WHERE archive_id = %s ORDER BY byte_offset", (archive_id,)
    ).fetchall()
    return [int(row[0]) for row in rows]


def _row(conn: psycopg.Connection[Any], archive_id: str, offset: int) -> bytes | None:
    row = conn.execute(
        "SELECT data FROM file_chunks WHERE archive_id = %s AND byte_offset = %s", (archive_id, offset)
    ).fetchone()
    return bytes(row[0]) if row else None
