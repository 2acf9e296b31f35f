"""Attempts of a job: each allocation is one. How an attempt's end moves its job (the retry policy
decides whether it goes back to the queue), and how attempts are shown."""

from __future__ import annotations

import sqlite3
import time

from coordinator.retry import Event, after_failure
from coordinator.store import AllocRow, JobRow, Store
from shared.states import JobState
from shared.wire import AttemptView


def end_attempt(
    store: Store,
    db: sqlite3.Connection,
    job: JobRow,
    alloc: AllocRow,
    outcome: JobState,
    event: Event | None,
    reason: str,
    exit_code: int | None = None,
) -> JobRow:
    """The job's latest attempt ended: the job takes `outcome`, unless `event` is one its retry policy
    retries (and no stop was asked), in which case it waits for its next attempt (`retrying`). Answers the
    job as it is now."""
    if event is not None and not job.stop_requested:
        now = time.time()
        decision = after_failure(job.spec.retry, event, now, job.retry_since, alloc.started_at)
        if decision.retry_since != job.retry_since:
            store.set_retry_since(db, job.id, decision.retry_since)
        if decision.retry:
            why = f"attempt {alloc.attempt} {reason or outcome.value}; retrying on {event.value}"
            return store.set_job_state(db, job, JobState.RETRYING, why)
    return store.set_job_state(db, job, outcome, reason, exit_code)


def event_of(outcome: JobState, interrupted: str) -> Event | None:
    """The retry event an attempt's end stands for: an interruption when the coordinator ended it from
    outside (a lost, removed or drained host), an error when it failed by itself, none otherwise."""
    if interrupted or outcome is JobState.LOST:
        return Event.INTERRUPTION
    if outcome is JobState.FAILED:
        return Event.ERROR
    return None


def attempt_views(allocs: list[AllocRow], host_names: dict[str, str]) -> list[AttemptView]:
    return [
        AttemptView(
            attempt=a.attempt,
            allocation_id=a.id,
            host=host_names.get(a.host_id, a.host_id),
            status=a.state.value,
            reason=a.interrupted or a.reason,
            exit_code=a.exit_code,
            placed_at=a.created_at,
            started_at=a.started_at,
            finished_at=a.finished_at,
        )
        for a in allocs
    ]
