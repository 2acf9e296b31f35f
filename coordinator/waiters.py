"""Wake-ups for long polls: a waiter sleeps on a key until someone says that key changed, or a timeout."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from coordinator import work_slot


class Waiters:
    def __init__(self) -> None:
        self._events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        # Tells the other coordinator replicas of each change (coordinator/notify.py); None: there are none.
        self.relay: Callable[[str], None] | None = None

    def changed(self, key: str) -> None:
        """Wake everyone waiting on `key`, here and on the other replicas. Safe to call any number of times."""
        self.wake(key)
        if self.relay is not None:
            self.relay(key)

    def wake(self, key: str) -> None:
        """Wake everyone waiting on `key` here (another replica's change, heard of)."""
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Wake every waiter here: each looks at the store again (changes may have gone unheard)."""
        events, self._events = self._events, defaultdict(asyncio.Event)
        for event in events.values():
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
