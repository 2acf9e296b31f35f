"""Backfill with reservations, as Slurm's backfill pass does it: the first jobs of the queue that cannot start
now are each given the blocks where they could start soonest, and a job behind them may use those blocks
only if it will have ended by then. A stream of small jobs then cannot starve a large one: the blocks it
waits for are held for it as they free up.

A busy block's estimated end is its allocation's placement plus its job's max_duration (the agent enforces
it from placement); an allocation past its estimate ends now; one whose job has no max_duration never has a
known end. `plan()` walks the jobs left pending, in queue order, and gives each of the first `depth` that a
ready host fits (Slurm's bf_max_job_test) a reservation: on the host it fits (for `nodes: N`, the N hosts of
one fleet) where enough matching blocks are free or end soonest, not counting the blocks an earlier
reservation took; the start is when the last of them ends (None: unknown).

Placement takes the reservations as an input (scheduler.py, live_schedule.py): a job may use a reserved block
only if it is the reserved job or ahead of it in queue order, or it has a max_duration and `now +
max_duration` is at most the reservation's known start (`Reserved.hidden`). A reservation ends when its job
leaves the queue (placed, stopped) or moves in it (its fair share changed): it is planned again. Pure.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from coordinator.locality import Levels, choose_blocks

BACKFILL_DEPTH = 16  # the waiting jobs given a reservation, at most (the `backfill_depth` setting)
Order = tuple[int, float, int]  # PendingJob.order(): priority, fair share, age
# host id -> busy block -> estimated end; a busy block absent: unknown (its job has no max_duration)
Ends = Mapping[str, Mapping[int, float]]
Queued = tuple[str, Order, int, Hashable]  # a pending job: id, order, nodes, fit key


@dataclass(frozen=True)
class Reservation:
    job_id: str
    order: Order
    nodes: tuple[tuple[str, str, tuple[int, ...]], ...]  # (host id, host name, blocks), one per node
    start: float | None  # when the last of its blocks ends; None: unknown (a job there has no max_duration)

    def where(self) -> str:
        """Its hosts' names, for a reason: `h3`, or `h3, h4` for a multi-node job."""
        return ", ".join(name for _, name, _ in self.nodes)


class Candidate(NamedTuple):
    """A ready host that fits a job, as the planner sees it (a tuple: a plan makes one per host and fit)."""

    host_id: str
    name: str
    fleet: str
    need: int  # blocks the job takes there
    matching: frozenset[int]  # the host's blocks whose GPUs the job accepts, busy or free
    levels: Levels


class Reserved:
    """The reservations as placement reads them: by host, with each one's rank in queue order, so that a job
    finds the reservations it must keep off (those ahead of it that it cannot finish before) on one host
    without a scan of the others."""

    def __init__(self, reservations: Iterable[Reservation], now: float) -> None:
        self.now = now
        self.by_job = {r.job_id: r for r in reservations}
        ranked = sorted(self.by_job.values(), key=lambda r: r.order)
        self.orders = [r.order for r in ranked]
        self.on: dict[str, list[tuple[int, Reservation, frozenset[int]]]] = {}
        for rank, r in enumerate(ranked):
            for host_id, _, blocks in r.nodes:
                self.on.setdefault(host_id, []).append((rank, r, frozenset(blocks)))

    def without(self, job_ids: Iterable[str]) -> Reserved:
        """These reservations but those of `job_ids` (their jobs left the queue: placed, stopped)."""
        gone = set(job_ids) & self.by_job.keys()
        if not gone:
            return self
        return Reserved((r for r in self.by_job.values() if r.job_id not in gone), self.now)

    def ahead(self, order: Order) -> int:
        """How many reservations are ahead of a job in queue order (its own is not)."""
        return bisect.bisect_left(self.orders, order)

    def hidden(self, host_id: str, ahead: int, max_duration_s: int | None) -> frozenset[int]:
        """The host's blocks a job may not use: those of the first `ahead` reservations that it would not
        finish before (a job without max_duration finishes before none)."""
        kept: frozenset[int] = frozenset()
        for rank, r, blocks in self.on.get(host_id, ()):
            if rank < ahead and not self.fits_before(r, max_duration_s):
                kept |= blocks
        return kept

    def fits_before(self, r: Reservation, max_duration_s: int | None) -> bool:
        return max_duration_s is not None and r.start is not None and self.now + max_duration_s <= r.start

    def note(self, job_id: str) -> str:
        """What a reserved job's reason adds: where its blocks are held."""
        r = self.by_job.get(job_id)
        return f"; blocks reserved on {r.where()}" if r is not None else ""


def held_off(max_duration_s: int | None) -> str:
    """What the reason of a job kept off reserved blocks adds (it would fit on them now)."""
    if max_duration_s is None:
        return "; free blocks are reserved for a job ahead (a max_duration would let it run before it)"
    return "; free blocks are reserved for a job ahead, which is due to start before this one's max_duration ends"


def plan(
    queue: Iterable[Queued],
    candidates: Callable[[Hashable], Iterable[Candidate]],
    free: Mapping[str, Collection[int]],
    ends: Ends,
    now: float,
    depth: int,
) -> list[Reservation]:
    """Reservations for the first `depth` jobs of `queue` (the jobs left pending, in queue order) that a
    ready host fits. `candidates(key)`: the ready hosts that fit the jobs of that fit key (computed once per
    key: jobs that fit alike share the work); `free`: each host's free blocks. Pure."""
    planner = _Planner(free, ends, now)
    reservations: list[Reservation] = []
    tested = 0
    if depth <= 0:
        return reservations
    for job_id, order, nodes, key in queue:
        options = planner.options(key, candidates)
        if options is None:
            continue  # no ready host fits it: nothing to hold for it
        chosen = planner.best(options, nodes)
        if chosen is not None:
            reservations.append(planner.take(job_id, order, chosen))
        tested += 1
        if tested == depth:
            break  # the rest of the queue is not read
    return reservations


# (start, blocks of unknown end it waits for, name, host id, host version); start: inf when unknown
_Option = tuple[float, int, str, str, int, Candidate]


class _Planner:
    """One plan's state: the blocks reservations took so far, and each fit's hosts by soonest start (a
    heap whose entries are recomputed when a reservation took blocks of their host since)."""

    def __init__(self, free: Mapping[str, Collection[int]], ends: Ends, now: float) -> None:
        self.free, self.ends, self.now = free, ends, now
        self.taken: dict[str, set[int]] = {}
        self._times: dict[tuple[str, frozenset[int]], list[tuple[float, int]]] = {}
        self._options: dict[Hashable, list[_Option] | None] = {}

    def options(
        self, key: Hashable, candidates: Callable[[Hashable], Iterable[Candidate]]
    ) -> list[_Option] | None:
        """The hosts that could take the jobs of a fit key, soonest first (a heap); None if no ready host
        fits them."""
        if key not in self._options:
            hosts = list(candidates(key))
            options = [o for c in hosts if (o := self._option(c)) is not None]
            heapq.heapify(options)
            self._options[key] = options if hosts else None
        return self._options[key]

    def best(self, options: list[_Option], nodes: int) -> list[_Option] | None:
        """The soonest host, or the first `nodes` hosts of the first fleet to gather that many in order of
        start (so the latest of them is as soon as can be); None if no fleet has that many."""
        kept: list[_Option] = []
        by_fleet: dict[str, list[_Option]] = {}
        chosen = None
        while options:
            option = heapq.heappop(options)
            candidate = option[5]
            if option[4] != len(self.taken.get(candidate.host_id, ())):  # stale: recompute
                fresh = self._option(candidate)
                if fresh is not None:
                    heapq.heappush(options, fresh)
                continue
            kept.append(option)
            same = by_fleet.setdefault(candidate.fleet, [])
            same.append(option)
            if len(same) == nodes:
                chosen = same
                break
        for option in kept:
            heapq.heappush(options, option)
        return chosen

    def take(self, job_id: str, order: Order, chosen: list[_Option]) -> Reservation:
        nodes = []
        for start, _, _, _, _, c in chosen:
            times = self._free_times(c)
            if math.isinf(start):  # the soonest known, then those of unknown end
                blocks = sorted(b for _, b in times[: c.need])
            else:
                blocks = choose_blocks([b for t, b in times if t <= start], c.need, c.levels)
            self.taken.setdefault(c.host_id, set()).update(blocks)
            nodes.append((c.host_id, c.name, tuple(blocks)))
        start = max(o[0] for o in chosen)
        return Reservation(job_id, order, tuple(nodes), None if math.isinf(start) else start)

    def _option(self, c: Candidate) -> _Option | None:
        """When the host could start the job: when the `need`-th of its untaken matching blocks ends."""
        times = self._free_times(c)
        if len(times) < c.need:
            return None
        start = times[c.need - 1][0]
        unknown = sum(1 for t, _ in times[: c.need] if math.isinf(t)) if math.isinf(start) else 0
        return (start, unknown, c.name, c.host_id, len(self.taken.get(c.host_id, ())), c)

    def _free_times(self, c: Candidate) -> list[tuple[float, int]]:
        """The host's untaken matching blocks with when each is free (inf: unknown), soonest first. Sorted
        once per host and request: jobs of other fits mostly ask the same blocks."""
        key = (c.host_id, c.matching)
        times = self._times.get(key)
        if times is None:
            free, ends, now = self.free[c.host_id], self.ends.get(c.host_id, {}), self.now
            times = sorted((now if b in free else max(ends.get(b, math.inf), now), b) for b in c.matching)
            self._times[key] = times
        taken = self.taken.get(c.host_id)
        return [t for t in times if t[1] not in taken] if taken else times
