"""Backpressure: a bound on the requests of each class that the coordinator is reading or working on.

One over the bound is answered at once with 429, `Retry-After` and one JSON line, instead of queueing until
everything is slow (a fleet reconnecting after a restart, a burst of submits). A long poll gives its slot
back when it starts waiting (`Waiters.wait` calls `work_slot.release_current()`), so thousands of idle agents holding
a poll open cost no slot; only requests doing work count. Agents honour Retry-After and add jitter.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from coordinator import work_slot
from coordinator.http import HOST_ID, error
from coordinator.limits import BusyLimits
from shared import constants as C

log = logging.getLogger("gpuctl.coordinator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REFUSALS_KEPT = 1000
REFUSAL_LOG_EVERY_S = 10.0


@dataclass
class _Slot:
    gate: BusyGate
    kind: str
    held: bool = True

    def release(self) -> None:
        """Idempotent."""
        if self.held:
            self.held = False
            self.gate.busy[self.kind] -= 1


def route_class(path: str) -> str | None:
    """Which bound a path counts against; None for what is never refused (health checks, the CA)."""
    if path.startswith(C.AGENT_PREFIX + "/"):
        if path == f"{C.AGENT_PREFIX}/ca":
            return None
        return "logs" if path.endswith("/logs") else "agent"
    return "user" if path.startswith(C.API_PREFIX + "/") else None


class BusyGate:
    """Counts the requests of each class at work. Not thread-safe: it lives on the event loop."""

    def __init__(self, limits: BusyLimits) -> None:
        self.limits = limits
        self.busy = {"agent": 0, "logs": 0, "user": 0}
        self.refusals: deque[tuple[float, str, str]] = deque(maxlen=REFUSALS_KEPT)  # (monotonic, kind, who)
        self._refused_since_log = 0
        self._logged_at = 0.0

    def limit(self, kind: str) -> int:
        return int(getattr(self.limits, kind))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = route_class(request.path)
        if kind is None:
            return await handler(request)
        if self.busy[kind] >= self.limit(kind):
            return self._refuse(request, kind)
        self.busy[kind] += 1
        slot = _Slot(self, kind)
        token = work_slot.current.set(slot.release)
        try:
            return await handler(request)
        finally:
            work_slot.current.reset(token)
            slot.release()

    def _refuse(self, request: web.Request, kind: str) -> web.Response:
        now = time.monotonic()
        who = request.get(HOST_ID) or request.remote or "?"
        self.refusals.append((now, kind, str(who)))
        self._refused_since_log += 1
        if now - self._logged_at >= REFUSAL_LOG_EVERY_S:
            log.warning(
                "busy: %d request(s) refused with 429 in the last %.0f s (%s at its limit of %d)",
                self._refused_since_log,
                min(now - self._logged_at, REFUSAL_LOG_EVERY_S),
                kind,
                self.limit(kind),
            )
            self._refused_since_log, self._logged_at = 0, now
        retry_after_s = self.limits.retry_after_s
        answer = error(429, f"the coordinator is busy ({kind} requests); try again in {retry_after_s} s")
        answer.headers["Retry-After"] = str(retry_after_s)
        return answer
