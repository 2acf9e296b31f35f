"""Why a host takes no new work, as the coordinator sees it, shown on the host in `gpuctl hosts`.

In memory, like liveness: a refused inventory is sent again by the agent's next sync, and a host the scheduler
skips is skipped again by the next pass, so a restarted coordinator finds every problem again within seconds.
"""

from __future__ import annotations

import logging

log = logging.getLogger("gpuctl.coordinator")

INVENTORY = "inventory"  # the agent's inventory was refused when it arrived
SCHEDULER = "scheduler"  # a scheduling pass left the host out
PROTOCOL = "protocol"  # its agent speaks a protocol version this coordinator does not serve


class HostProblems:
    """Problems by host id and kind. Each new or changed problem is logged once, not on every pass."""

    def __init__(self) -> None:
        self._by_host: dict[str, dict[str, str]] = {}

    def set(self, host_id: str, kind: str, text: str) -> None:
        problems = self._by_host.setdefault(host_id, {})
        if problems.get(kind) != text:
            log.warning("host %s: %s", host_id, text)
        problems[kind] = text

    def clear(self, host_id: str, kind: str) -> None:
        problems = self._by_host.get(host_id)
        if problems and problems.pop(kind, None) is not None:
            log.info("host %s: %s problem resolved", host_id, kind)

    def replace(self, kind: str, texts: dict[str, str]) -> None:
        """Make `texts` (by host id) the whole set of problems of this kind."""
        for host_id in [h for h, p in self._by_host.items() if kind in p and h not in texts]:
            self.clear(host_id, kind)
        for host_id, text in texts.items():
            self.set(host_id, kind, text)

    def has(self, host_id: str, kind: str) -> bool:
        return kind in self._by_host.get(host_id, {})

    def of(self, host_id: str) -> tuple[str, ...]:
        return tuple(self._by_host.get(host_id, {}).values())
