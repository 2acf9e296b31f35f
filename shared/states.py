"""Job and allocation states, each with one table of allowed transitions, enforced in one place."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    SUBMITTED = "submitted"
    PENDING = "pending"
    ASSIGNED = "assigned"
    PULLING = "pulling"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"
    RETRYING = "retrying"

    @property
    def terminal(self) -> bool:
        return self in _JOB_TERMINAL


_JOB_TERMINAL = {JobState.DONE, JobState.FAILED, JobState.STOPPED, JobState.LOST}
_ACTIVE = {JobState.ASSIGNED, JobState.PULLING, JobState.RUNNING}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTED: frozenset({JobState.PENDING, JobState.ASSIGNED, JobState.STOPPED}),
    JobState.PENDING: frozenset({JobState.PENDING, JobState.ASSIGNED, JobState.STOPPED}),
    JobState.ASSIGNED: frozenset(_ACTIVE | _JOB_TERMINAL),
    JobState.PULLING: frozenset(_ACTIVE | _JOB_TERMINAL),
    JobState.RUNNING: frozenset({JobState.RUNNING} | _JOB_TERMINAL),
    JobState.RETRYING: frozenset({JobState.PENDING, JobState.ASSIGNED, JobState.STOPPED}),
    JobState.LOST: frozenset({JobState.RETRYING}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.RETRYING}),
    JobState.STOPPED: frozenset(),
}


class AllocState(enum.StrEnum):
    """What an agent reports for one allocation."""

    STARTING = "starting"
    PULLING = "pulling"
    RUNNING = "running"
    EXITED = "exited"  # the process ended by itself; exit_code says how
    FAILED = "failed"  # could not start, or died for a reason the agent knows (reason says)
    STOPPED = "stopped"  # ended because it was asked to stop

    @property
    def terminal(self) -> bool:
        return self in (AllocState.EXITED, AllocState.FAILED, AllocState.STOPPED)


class InvalidTransition(ValueError):
    pass


def check_job_transition(old: JobState, new: JobState) -> JobState:
    """Return `new` if a job may move from `old` to it, else raise InvalidTransition."""
    if new not in JOB_TRANSITIONS[old]:
        raise InvalidTransition(f"job cannot go from {old} to {new}")
    return new


def job_state_for(alloc: AllocState, exit_code: int | None, stop_requested: bool) -> JobState:
    """The job state that an allocation's reported state implies (one node, no retry)."""
    if alloc in (AllocState.STARTING,):
        return JobState.ASSIGNED
    if alloc is AllocState.PULLING:
        return JobState.PULLING
    if alloc is AllocState.RUNNING:
        return JobState.RUNNING
    if alloc is AllocState.STOPPED or (stop_requested and alloc.terminal):
        return JobState.STOPPED
    if alloc is AllocState.EXITED and exit_code == 0:
        return JobState.DONE
    return JobState.FAILED
