"""The hosts that can take a group's next job, in the order the scheduler prefers them: (GPUs wasted,
blocks to spare, name, id). The first is found without a scan: ranks are few (a host has a handful of
blocks), and the hosts of one rank sit in a heap by name."""

from __future__ import annotations

import heapq
from collections.abc import Iterator


class Ranking:
    """Hosts by rank (GPUs wasted, blocks to spare, name, id): `schedule()`'s order of preference. Hosts of
    one (wasted, spare) bucket sit in a heap by name; a host that moved lingers in its old heap until it
    comes to the top."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[int, int], Bucket] = {}
        self._at: dict[str, tuple[int, int]] = {}

    def put(self, host_id: str, name: str, rank: tuple[int, int] | None) -> None:
        old = self._at.pop(host_id, None)
        if old is not None and old != rank:
            bucket = self._buckets[old]
            bucket.members.pop(host_id)
            if not bucket.members:
                del self._buckets[old]
        if rank is not None:
            self._at[host_id] = rank
            if old != rank:
                self._buckets.setdefault(rank, Bucket()).add(host_id, name)

    def best(self) -> str | None:
        if not self._buckets:
            return None
        return self._buckets[min(self._buckets)].first()

    def ordered(self) -> Iterator[str]:
        """All ranked hosts, best first (sorts: for the rare job the best host would split)."""
        for rank in sorted(self._buckets):
            members = self._buckets[rank].members
            yield from sorted(members, key=lambda h: (members[h], h))


class Bucket:
    def __init__(self) -> None:
        self.members: dict[str, str] = {}  # host id -> name
        self._heap: list[tuple[str, str]] = []

    def add(self, host_id: str, name: str) -> None:
        self.members[host_id] = name
        heapq.heappush(self._heap, (name, host_id))
        if len(self._heap) > 2 * len(self.members) + 16:
            self._heap = [(n, h) for h, n in self.members.items()]
            heapq.heapify(self._heap)

    def first(self) -> str:
        while self.members.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][1]
