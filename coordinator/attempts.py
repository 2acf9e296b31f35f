"""Attempts of a job: each allocation is one. How an attempt's end moves its job (the retry policy
decides whether it goes back to the queue), and how attempts are shown."""

from __future__ import annotations

import time

from coordinator.db import Connection
from coordinator.node_order import ends_attempt_when_done, waits_for
from coordinator.retry import Event, after_failure
from coordinator.store import AllocRow, JobRow, Store
from shared.spec import TaskSpec
from shared.states import AllocState, JobState
from shared.wire import AttemptView

_RUNNING = frozenset({JobState.ASSIGNED, JobState.PULLING, JobState.RUNNING})  # an attempt under way
NEVER_STARTED = "stopped before it started"


def end_attempt(
    store: Store,
    db: Connection,
    job: JobRow,
    alloc: AllocRow,
    outcome: JobState,
    event: Event | None,
    reason: str,
    exit_code: int | None = None,
) -> JobRow:
    """The job's latest attempt ended: the job takes `outcome`, unless `event` is one its retry policy
    retries (and no stop was asked), in which case it waits for its next attempt (`retrying`). Answers the
    job as it is now. One node of a multi-node job speaks for the whole attempt: a node that ends otherwise
    than done stops the others, and the job is done only once every node is (or, under `stop_criteria:
    master-done`, once node 0 is: the others are stopped then, their ends not counted)."""
    if job.spec.nodes > 1:
        if job.status not in _RUNNING:
            return job  # another node ended this attempt already (and stopped this one)
        peers = [a for a in store.allocations_of(job.id) if a.attempt == alloc.attempt and a.id != alloc.id]
        ends = ends_attempt_when_done(job.spec, alloc)
        if outcome is JobState.DONE and not ends and any(not a.state.terminal for a in peers):
            return job
        _stop_peers(store, db, job, alloc, peers, f"node {alloc.node} {reason or outcome.value}")
    if event is not None and not job.stop_requested:
        now = time.time()
        decision = after_failure(job.spec.retry, event, now, job.retry_since, alloc.started_at)
        if decision.retry_since != job.retry_since:
            store.set_retry_since(db, job.id, decision.retry_since)
        if decision.retry:
            why = f"attempt {alloc.attempt} {reason or outcome.value}; retrying on {event.value}"
            return store.set_job_state(db, job, JobState.RETRYING, why)
    return store.set_job_state(db, job, outcome, reason, exit_code)


def stop_attempt(store: Store, db: Connection, job: JobRow, alloc: AllocRow) -> set[str]:
    """Ask the job's latest attempt, of which `alloc` is node 0, to stop (`gpuctl stop`); answers the hosts
    whose desired state changed. Node 0 stops its peers when it ends, unless it is held back by its startup
    order: it never reached its agent, so it ends here, and its attempt with it."""
    store.bump_index(db, alloc.host_id)
    if not _held(store, job, alloc):
        store.set_desired(db, alloc.id, "stop")
        return {alloc.host_id}
    store.update_allocation(db, alloc.id, AllocState.STOPPED, None, NEVER_STARTED, 0)
    end_attempt(store, db, job, alloc, JobState.STOPPED, None, NEVER_STARTED)
    return {a.host_id for a in store.allocations_of(job.id) if a.attempt == alloc.attempt}


def _stop_peers(
    store: Store, db: Connection, job: JobRow, alloc: AllocRow, peers: list[AllocRow], why: str
) -> None:
    """Stop the attempt's nodes still running, as stopped from outside: their own ends then move the job no
    more (the attempt has ended once already). A node held back by its startup order never reached its
    agent: it ends here."""
    for peer in peers:
        if not peer.state.terminal and not peer.interrupted:
            if _held(store, job, peer):
                store.update_allocation(db, peer.id, AllocState.STOPPED, None, NEVER_STARTED, 0)
            else:
                store.set_desired(db, peer.id, "stop")
            store.set_interrupted(db, peer.id, why)
            store.bump_index(db, peer.host_id)


def _held(store: Store, job: JobRow, alloc: AllocRow) -> bool:
    """Whether a node still waits for its peers to start. Once they have, it never waits again, so a node
    held now was never sent to its agent."""
    if job.spec.nodes == 1:
        return False
    attempt = [a for a in store.allocations_of(job.id) if a.attempt == alloc.attempt]
    return bool(waits_for(job.spec, alloc, attempt))


def event_of(outcome: JobState, interrupted: str) -> Event | None:
    """The retry event an attempt's end stands for: an interruption when the coordinator ended it from
    outside (a lost, removed or drained host), an error when it failed by itself, none otherwise."""
    if interrupted or outcome is JobState.LOST:
        return Event.INTERRUPTION
    if outcome is JobState.FAILED:
        return Event.ERROR
    return None


def attempt_views(allocs: list[AllocRow], host_names: dict[str, str], spec: TaskSpec) -> list[AttemptView]:
    """Every attempt's nodes; a node held back by its startup order says what it waits for."""
    return [
        AttemptView(
            attempt=a.attempt,
            allocation_id=a.id,
            host=host_names.get(a.host_id, a.host_id),
            status=a.state.value,
            reason=a.interrupted or a.reason or _waiting(spec, a, allocs),
            exit_code=a.exit_code,
            placed_at=a.created_at,
            started_at=a.started_at,
            finished_at=a.finished_at,
        )
        for a in allocs
    ]


def held_reason(spec: TaskSpec, allocs: list[AllocRow]) -> str:
    """Which node of the latest attempt its startup order holds back, and what it waits for ("" if none)."""
    latest = [a for a in allocs if a.attempt == allocs[-1].attempt]
    return next((f"node {a.node} {why}" for a in latest if (why := _waiting(spec, a, allocs))), "")


def _waiting(spec: TaskSpec, alloc: AllocRow, allocs: list[AllocRow]) -> str:
    if spec.nodes == 1 or alloc.state.terminal:
        return ""
    return waits_for(spec, alloc, [a for a in allocs if a.attempt == alloc.attempt])
