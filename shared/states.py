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

# A job whose host vanished (`lost`) or that waits for another attempt (`retrying`, or `pending` again after
# one) may come back to life: its host returned and its allocation had not been placed again elsewhere.
_REVIVED = {
    JobState.ASSIGNED,
    JobState.RUNNING,
    JobState.PULLING,
    JobState.DONE,
    JobState.FAILED,
    JobState.STOPPED,
}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTED: frozenset({JobState.PENDING, JobState.ASSIGNED, JobState.STOPPED}),
    # failed: a retry window (`retry: {on_events: [no-capacity], duration}`) ran out while it waited
    JobState.PENDING: frozenset(
        {JobState.PENDING, JobState.ASSIGNED, JobState.STOPPED, JobState.FAILED} | _REVIVED
    ),
    JobState.ASSIGNED: frozenset(_ACTIVE | _JOB_TERMINAL | {JobState.RETRYING}),
    JobState.PULLING: frozenset(_ACTIVE | _JOB_TERMINAL | {JobState.RETRYING}),
    JobState.RUNNING: frozenset({JobState.RUNNING, JobState.RETRYING} | _JOB_TERMINAL),
    JobState.RETRYING: frozenset({JobState.RETRYING, JobState.PENDING, JobState.FAILED} | _REVIVED),
    JobState.LOST: frozenset({JobState.RETRYING} | _REVIVED),
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
    # Set by the coordinator, never reported: its host was silent past `lost_after`. A host that returns
    # with it still running gets it back (`running`) unless the job was placed again elsewhere meanwhile.
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in (AllocState.EXITED, AllocState.FAILED, AllocState.STOPPED, AllocState.LOST)


# What `gpuctl hosts` and `ps` show for an allocation on a host that is unreachable (not yet lost): its
# last reported state may be stale. Never stored: liveness lives in memory.
ALLOC_UNKNOWN = "unknown"


class HostState(enum.StrEnum):
    """A host's stored state; `unreachable` is derived from its lease (in memory), never stored."""

    READY = "ready"
    DRAINING = "draining"  # takes no new work; what runs there finishes (or was stopped: `drain --stop`)
    REMOVED = "removed"  # its certificates are revoked, for good


HOST_TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    HostState.READY: frozenset({HostState.READY, HostState.DRAINING, HostState.REMOVED}),
    HostState.DRAINING: frozenset({HostState.READY, HostState.DRAINING, HostState.REMOVED}),
    HostState.REMOVED: frozenset({HostState.REMOVED}),
}


class InvalidTransition(ValueError):
    pass


def check_job_transition(old: JobState, new: JobState) -> JobState:
    """Return `new` if a job may move from `old` to it, else raise InvalidTransition."""
    if new not in JOB_TRANSITIONS[old]:
        raise InvalidTransition(f"job cannot go from {old} to {new}")
    return new


def check_host_transition(old: HostState, new: HostState) -> HostState:
    """Return `new` if a host may move from `old` to it, else raise InvalidTransition."""
    if new not in HOST_TRANSITIONS[old]:
        raise InvalidTransition(f"host cannot go from {old} to {new}")
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
