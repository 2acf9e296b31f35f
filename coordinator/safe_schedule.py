"""One bad host must not stop placement for every host.

`schedule()` trusts each inventory it is given. Before a pass, hosts whose stored inventory fails the same
check as an arriving one are left out; if the pass still raises, one pass per host finds the hosts it raises
on, and the pass runs again without them. Pure, like the scheduler: the caller records the skipped hosts.
The scheduler kept between changes (live_schedule.py) leaves hosts out by the same two rules, one host at
a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from coordinator.scheduler import HostCapacity, PendingJob, ScheduleResult, schedule
from coordinator.validate_inventory import inventory_problem

Schedule = Callable[[Sequence[PendingJob], Sequence[HostCapacity]], ScheduleResult]


def schedule_skipping(
    jobs: Sequence[PendingJob], hosts: Sequence[HostCapacity], place: Schedule = schedule
) -> tuple[ScheduleResult, dict[str, str]]:
    """Placements and reasons over the sound hosts, and why each other host was left out (by host id).
    Raises only when the pass fails with no single host to blame (then nothing was placed)."""
    skipped: dict[str, str] = {}
    sound = []
    for host in hosts:
        problem = unsound(host)
        if problem is None:
            sound.append(host)
        else:
            skipped[host.host_id] = problem
    try:
        return place(jobs, sound), skipped
    except Exception:
        pass
    kept = []
    for host in sound:
        try:
            place(jobs, [host])
        except Exception as exc:
            skipped[host.host_id] = failed_on(exc)
        else:
            kept.append(host)
    return place(jobs, kept), skipped


def unsound(host: HostCapacity) -> str | None:
    """Why the host's stored inventory keeps it out of scheduling (it fails the check an arriving one
    gets), or None."""
    problem = inventory_problem(host.inventory)
    return None if problem is None else f"left out of scheduling, its stored inventory is unsound: {problem}"


def failed_on(exc: Exception) -> str:
    """Why a host that the scheduler raised on is left out."""
    return f"left out of scheduling, a pass failed on it: {type(exc).__name__}: {exc}"
