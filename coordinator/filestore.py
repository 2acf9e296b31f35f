"""Job file archives (`files:`), stored by content: the id of an archive is the sha256 of its bytes.

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
from collections.abc import AsyncIterable, Callable
from pathlib import Path

ARCHIVE_ID_RE = re.compile(r"^[0-9a-f]{64}$")


class TooLarge(ValueError):
    pass


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
