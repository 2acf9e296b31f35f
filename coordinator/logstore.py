"""Allocation logs, written by byte offset: one append-only file each under the state dir (the SQLite
default), or rows of a chunk table when the store is PostgreSQL (coordinator/pg_logs.py).

`append` is idempotent: the agent may send the same bytes twice (after a lost answer or a restart of either
side) and they land once. A byte is acknowledged only after it is durable (fsynced, or committed), so a
restarted coordinator has every byte it ever acknowledged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Logs(Protocol):
    """What the coordinator needs of a log store; both backends answer alike, byte for byte."""

    def size(self, alloc_id: str) -> int: ...

    def append(self, alloc_id: str, offset: int, data: bytes, cap: int = 0) -> int: ...

    def read(self, alloc_id: str, offset: int, max_bytes: int) -> bytes: ...

    def close(self) -> None: ...


def check_alloc_id(alloc_id: str) -> str:
    if not _ID.match(alloc_id):
        raise ValueError(f"bad allocation id {alloc_id!r}")
    return alloc_id


def accepted(size: int, offset: int, data: bytes, cap: int) -> tuple[bytes, int]:
    """Of `data`, found at `offset` of a log that holds `size` bytes: the bytes to store after those, and the
    size to acknowledge once they are stored.

    Bytes already held are skipped. A chunk that starts past the end (a gap) stores nothing: the answer
    tells the sender where to resume. With a `cap` (> 0), no byte past it is stored: once the log holds
    `cap` bytes, later chunks are acknowledged and dropped, so a sender that ignores the cap moves on.
    """
    if cap > 0 and size >= cap:
        return b"", max(size, offset + len(data))
    if offset > size or offset + len(data) <= size:
        return b"", size
    if cap > 0:
        data = data[: cap - offset]
    new = data[size - offset :]
    return new, size + len(new)


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, alloc_id: str) -> Path:
        return self.root / f"{check_alloc_id(alloc_id)}.log"

    def size(self, alloc_id: str) -> int:
        try:
            return self._path(alloc_id).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, alloc_id: str, offset: int, data: bytes, cap: int = 0) -> int:
        """Store `data` found at `offset` of the allocation's log; answer the acknowledged size (`accepted`)."""
        new, acked = accepted(self.size(alloc_id), offset, data, cap)
        if new:
            with open(self._path(alloc_id), "ab") as f:
                f.write(new)
                f.flush()
                os.fsync(f.fileno())
        return acked

    def read(self, alloc_id: str, offset: int, max_bytes: int) -> bytes:
        try:
            with open(self._path(alloc_id), "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""

    def close(self) -> None:
        """Nothing is held open between calls."""
