"""Job arrays' rules, pure: which waiting tasks the `%N` limit lets the scheduler see, and what one line
says of a whole array.

The limit is an eligibility rule applied where pending jobs are gathered, before placement: the first
`N - placed` waiting tasks of an array (in queue order, so lowest index first) go to the scheduler, the
rest stay pending with the reason. A pass therefore never places more than N tasks of an array at once,
whatever the scheduler decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shared.states import JobState


@dataclass(frozen=True)
class ArrayLoad:
    limit: int  # at most this many tasks placed at once (> 0)
    active: int  # tasks placed now: assigned, pulling or running


class Task(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def array_id(self) -> str | None: ...


T = TypeVar("T", bound=Task)


def within_limits(jobs: Sequence[T], loads: Mapping[str, ArrayLoad]) -> tuple[list[T], dict[str, str]]:
    """The jobs the scheduler may place now (in their order), and the reason for each job held back
    (by id): a task of an array that has as many tasks placed as its limit allows. Jobs not in an
    array, and tasks of arrays absent from `loads` (no limit), always pass."""
    room = {array_id: load.limit - load.active for array_id, load in loads.items()}
    eligible: list[T] = []
    held: dict[str, str] = {}
    for job in jobs:
        array_id = job.array_id
        if array_id is None or array_id not in room:
            eligible.append(job)
        elif room[array_id] > 0:
            room[array_id] -= 1
            eligible.append(job)
        else:
            held[job.id] = held_reason(loads[array_id].limit)  # counting the tasks let through in this pass
    return eligible, held


def held_reason(limit: int) -> str:
    """Why a task of an array with a `%N` limit waits while that many of its tasks are placed."""
    return f"array at its limit: {limit} of {limit} running"


# An array's status is its busiest task's: running while any runs, then pulling, assigned, waiting;
# once every task ended, failed if any failed (or was lost), stopped if any was stopped, else done.
_STATUS_ORDER = (
    JobState.RUNNING,
    JobState.PULLING,
    JobState.ASSIGNED,
    JobState.PENDING,
    JobState.RETRYING,
    JobState.SUBMITTED,
    JobState.FAILED,
    JobState.LOST,
    JobState.STOPPED,
)


def array_status(counts: Mapping[str, int]) -> str:
    """One status for an array from its tasks' counts by status. Pure."""
    for state in _STATUS_ORDER:
        if counts.get(state.value):
            return state.value
    return JobState.DONE.value
