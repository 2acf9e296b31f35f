"""Job file archives (`files:`), stored by content: the id of an archive is the sha256 of its bytes. Files
under the state dir (the SQLite default), or rows of a chunk table when the store is PostgreSQL
(coordinator/pg_files.py).

`put` is idempotent (the same bytes give the same id, stored once) and safe concurrently (each upload
writes a temporary file of its own, fsynced, then renamed into place). The coordinator never unpacks an
archive; the agent does, safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

ARCHIVE_ID_RE = re.compile(r"^[0-9a-f]{64}$")
READ_BYTES = 1024 * 1024  # an archive is sent to an agent in pieces this size


class TooLarge(ValueError):
    pass


class Archives(Protocol):
    """What the coordinator needs of an archive store; both backends answer alike."""

    def has(self, archive_id: str) -> bool: ...

    def size(self, archive_id: str) -> int | None: ...

    def chunks(self, archive_id: str) -> AsyncIterator[bytes]: ...

    def prune(self, keep: set[str], older_than: float) -> list[str]: ...

    async def put(
        self, chunks: AsyncIterable[bytes], max_bytes: int, admit: Callable[[str, int], None] | None = None
    ) -> str: ...

    def close(self) -> None: ...


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, archive_id: str) -> Path:
        """Where the archive lives. Raises ValueError for anything but a sha256 hex id."""
        if not ARCHIVE_ID_RE.match(archive_id):
            raise ValueError(f"bad archive id {archive_id!r}")
        return self.root / f"{archive_id}.tar.gz"

    def has(self, archive_id: str) -> bool:
        try:
            return self.path(archive_id).is_file()
        except ValueError:
            return False

    def size(self, archive_id: str) -> int | None:
        """The archive's size in bytes; None if there is no such archive."""
        try:
            return self.path(archive_id).stat().st_size
        except (ValueError, FileNotFoundError):
            return None

    async def chunks(self, archive_id: str) -> AsyncIterator[bytes]:
        """The archive's bytes in order, read off the event loop."""
        with await asyncio.to_thread(open, self.path(archive_id), "rb") as f:
            while data := await asyncio.to_thread(f.read, READ_BYTES):
                yield data

    def prune(self, keep: set[str], older_than: float) -> list[str]:
        """Delete archives not in `keep` whose files are older than `older_than` (a timestamp), and upload
        leftovers of a crash; answers the ids deleted."""
        removed = []
        for path in self.root.iterdir():
            if path.name.startswith(".upload-"):
                archive_id = None  # a crash cut this upload short
            else:
                archive_id = path.name.removesuffix(".tar.gz")
                is_archive = path.name.endswith(".tar.gz") and ARCHIVE_ID_RE.match(archive_id)
                if not is_archive or archive_id in keep:
                    continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    if archive_id is not None:
                        removed.append(archive_id)
        return removed

    async def put(
        self, chunks: AsyncIterable[bytes], max_bytes: int, admit: Callable[[str, int], None] | None = None
    ) -> str:
        """Store the bytes of `chunks`; answer their id. Raises TooLarge past `max_bytes`, or what `admit(id,
        size)` raises once the bytes are in (a quota); either way nothing is stored."""
        digest, size = hashlib.sha256(), 0
        temp = self.root / f".upload-{secrets.token_hex(8)}"
        try:
            with await asyncio.to_thread(open, temp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"the archive is over {max_bytes // (1024 * 1024)} MiB")
                    digest.update(chunk)
                    f.write(chunk)  # small and local; the slow part, fsync, runs off the loop
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            archive_id = digest.hexdigest()
            if admit is not None:
                admit(archive_id, size)
            os.replace(temp, self.path(archive_id))  # committed before it is acknowledged
            return archive_id
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def close(self) -> None:
        """Nothing is held open between calls."""
