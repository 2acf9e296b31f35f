"""Wake-ups for long polls: a waiter sleeps on a key until someone says that key changed, or a timeout."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from coordinator import work_slot


class Waiters:
    def __init__(self) -> None:
        self._events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def changed(self, key: str) -> None:
        """Wake everyone waiting on `key`. Safe to call any number of times."""
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    async def wait(self, key: str, timeout_s: float) -> bool:
        """True if `key` changed within the timeout. A request that waits here gives back its busy slot."""
        work_slot.release_current()
        event = self._events[key]
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
            return True
        except TimeoutError:
            return False
