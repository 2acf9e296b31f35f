"""Allocation logs on disk, one append-only file each, written by byte offset.

`append` is idempotent: the agent may send the same bytes twice (after a lost answer or a restart of either
side) and they land once. A byte is acknowledged only after it is fsynced, so a restarted coordinator has every
byte it ever acknowledged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, alloc_id: str) -> Path:
        if not _ID.match(alloc_id):
            raise ValueError(f"bad allocation id {alloc_id!r}")
        return self.root / f"{alloc_id}.log"

    def size(self, alloc_id: str) -> int:
        try:
            return self._path(alloc_id).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, alloc_id: str, offset: int, data: bytes, cap: int = 0) -> int:
        """Store `data` found at `offset` of the allocation's log; answer the acknowledged size.

        Bytes already held are skipped. A chunk that starts past the end (a gap) stores nothing: the answer
        tells the sender where to resume. With a `cap` (> 0), no byte past it is stored: once the log holds
        `cap` bytes, later chunks are acknowledged and dropped, so a sender that ignores the cap moves on.
        """
        size = self.size(alloc_id)
        if cap > 0 and size >= cap:
            return max(size, offset + len(data))
        if offset > size or offset + len(data) <= size:
            return size
        if cap > 0:
            data = data[: cap - offset]
        with open(self._path(alloc_id), "ab") as f:
            f.write(data[size - offset :])
            f.flush()
            os.fsync(f.fileno())
        return size + len(data) - (size - offset)

    def read(self, alloc_id: str, offset: int, max_bytes: int) -> bytes:
        try:
            with open(self._path(alloc_id), "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""
