"""How each host's agent reaches the coordinator, and the last proxy or tunnel failure it reported.

In memory, like liveness: an agent says both in every sync. A failure can only be told once the link works
again, so it is kept (with when it happened) to be shown beside the host's state, `unreachable` included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.wire import SyncRequest


@dataclass(frozen=True)
class Link:
    transport: str = ""
    error: str = ""
    error_at: float | None = None


class Links:
    """By host id. Safe to call on every sync (idempotent for the same report)."""

    def __init__(self) -> None:
        self._by_host: dict[str, Link] = {}

    def note(self, host_id: str, req: SyncRequest, now: float | None = None) -> None:
        known = self._by_host.get(host_id, Link())
        if req.link_error:
            at = (now or time.time()) - req.link_error_age_s
            self._by_host[host_id] = Link(req.transport, req.link_error, at)
        else:  # a link that has been fine long enough: the agent stopped reporting its old failure
            self._by_host[host_id] = Link(req.transport, known.error, known.error_at)

    def of(self, host_id: str) -> Link:
        return self._by_host.get(host_id, Link())
