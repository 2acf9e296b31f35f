"""Waiting before trying again: exponential, capped, with jitter, and never sooner than the server asked.

A fleet that loses its coordinator must not come back in step when it restarts: each agent's wait doubles
from `min_s` up to `max_s`, and is drawn at random from the upper half of that ("equal jitter"), so waits
spread out yet never collapse to zero. A server's `Retry-After` is a floor, with jitter added above it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

RETRY_AFTER_JITTER_FRACTION = 0.5  # wait Retry-After × [1, 1.5): refused agents do not return in step


class Backoff:
    """Not thread-safe; one per loop."""

    def __init__(self, min_s: float, max_s: float, uniform: Callable[[float, float], float] = random.uniform):
        self.min_s, self.max_s = min_s, max_s
        self._uniform = uniform
        self._next_s = min_s

    def reset(self) -> None:
        """After a success: the next failure waits `min_s` again."""
        self._next_s = self.min_s

    def delay_s(self, retry_after_s: float | None = None) -> float:
        """How long to wait before the next try, and double the next one (up to `max_s`)."""
        delay = self._uniform(self._next_s / 2, self._next_s)
        self._next_s = min(self._next_s * 2, self.max_s)
        if retry_after_s is not None and retry_after_s > 0:
            floor = self._uniform(retry_after_s, retry_after_s * (1 + RETRY_AFTER_JITTER_FRACTION))
            delay = max(delay, floor)
        return delay
