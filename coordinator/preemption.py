"""Preemption as a pure function: a pending job that does not fit, the hosts where stopping work could make
room for it, and the work running there in; the host and the jobs to stop out, or none.

Only jobs of strictly lower priority may stop (fair share never preempts), and only on one host of a fleet
with `preemption: true`, so that the job then fits there: a job is never stopped for one that still would not
fit after. Among the ways to make room, the one that stops the least wins: the fewest jobs, then the lowest
priorities (the highest priority stopped is as low as it can be, then the next one), then the youngest (they
lost the least work), then the host's name. The victims' end is an interruption for their retry policy
(coordinator/preempting.py does that part).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Running:
    """A job running on a host, as a possible victim."""

    job_id: str
    priority: int
    started_at: float
    blocks: frozenset[int]  # its blocks on this host

    def cost(self) -> tuple[int, float, str]:
        """What stopping it costs, cheapest first: the lowest priority, then the youngest."""
        return (self.priority, -self.started_at, self.job_id)


@dataclass(frozen=True)
class Room:
    """A ready host that the pending job fits, but not with its free blocks now."""

    host_id: str
    name: str
    need: int  # blocks the job needs here
    free: frozenset[int]  # free blocks it could use
    matching: frozenset[int]  # blocks it could use, busy or free
    running: tuple[Running, ...] = ()


@dataclass(frozen=True)
class Preemption:
    host_id: str
    victims: tuple[Running, ...]  # cheapest first


def choose(priority: int, rooms: Iterable[Room]) -> Preemption | None:
    """Where to stop what, so that a pending job of `priority` fits; None where no host can make room. Pure."""
    best: tuple[tuple[object, ...], Preemption] | None = None
    for room in rooms:
        victims = victims_in(priority, room)
        if victims is None:
            continue
        costs = sorted((v.cost() for v in victims), reverse=True)
        key = (len(victims), costs, room.name, room.host_id)
        if best is None or key < best[0]:
            best = (key, Preemption(room.host_id, victims))
    return best[1] if best is not None else None


def victims_in(priority: int, room: Room) -> tuple[Running, ...] | None:
    """The cheapest fewest jobs of lower priority whose blocks make room for the job on this host (None: no
    such jobs, or room enough already). The fewest: as many as the largest ones take to cover what is
    missing. The cheapest of that many: from the costliest down, each is left out if the others can still
    cover it; the highest cost stopped is then as low as it can be, and so on down the list."""
    missing = room.need - len(room.free)
    if missing <= 0:
        return None
    gains = {v: len(v.blocks & room.matching) for v in room.running if v.priority < priority}
    pool = sorted((v for v, gain in gains.items() if gain > 0), key=Running.cost)
    count = _fewest(sorted((gains[v] for v in pool), reverse=True), missing)
    if count is None:
        return None
    chosen: list[Running] = []
    for victim in reversed(list(pool)):  # the costliest first
        pool.remove(victim)
        if not _covers(pool, gains, count - len(chosen), missing):
            chosen.append(victim)
            missing -= gains[victim]
    return tuple(reversed(chosen))


def _fewest(gains_desc: list[int], missing: int) -> int | None:
    """How many of the gains, largest first, cover `missing`; None if all of them do not."""
    total = 0
    for count, gain in enumerate(gains_desc, 1):
        total += gain
        if total >= missing:
            return count
    return None


def _covers(pool: list[Running], gains: dict[Running, int], count: int, missing: int) -> bool:
    """Whether at most `count` of the pool cover `missing` blocks."""
    return missing <= 0 or sum(sorted((gains[v] for v in pool), reverse=True)[:count]) >= missing
