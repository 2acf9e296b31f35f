"""Group commit: writes that many requests make at about the same time (a fleet sending its inventories
after a coordinator restart) go to the store together, in one transaction and one fsync for the lot, in a
thread, so the event loop goes on serving while the disk works. Each caller resumes once its own write is
durable: what is acknowledged is still committed first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Rows for one store write that takes a list (`write`, called in a thread, one call at a time)."""

    def __init__(self, write: Callable[[list[T]], None]) -> None:
        self._write = write
        self._queued: list[tuple[T, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def put(self, row: T) -> None:
        """Return once `row` is committed, or raise what the write raised. Safe concurrently; a caller that
        is cancelled meanwhile does not take its row back."""
        future = asyncio.get_running_loop().create_future()
        self._queued.append((row, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="group-commit")
        await future

    async def _flush(self) -> None:
        """Write what is queued, then what was queued meanwhile, until nothing is."""
        while self._queued:
            batch, self._queued = self._queued, []
            error: Exception | None = None
            try:
                await asyncio.to_thread(self._write, [row for row, _ in batch])
            except Exception as exc:  # every caller of the batch hears it
                error = exc
            for _, future in batch:
                if future.done():  # its caller was cancelled
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
