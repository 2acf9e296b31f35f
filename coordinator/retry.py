"""The retry policy (dstack's `retry:`), as pure functions over times: no store, no clock.

An attempt that ends badly is an *event*: `error` (it exited non-zero or could not start), `interruption`
(its host was lost, removed, or drained with `--stop`). `no-capacity` is waiting: a job that nothing fits
stays pending, and with `no-capacity` in its policy it waits at most `duration`, then fails with the reason.

Attempts of one run of failures are spaced out, as Kubernetes' CrashLoopBackOff does: the next attempt waits
`retry_delay_s` after the first failure, doubling with each further one up to `retry_delay_max_s`, so a job
that fails at once never spins the scheduler or the host.

`duration` bounds a run of failures, so a job that fails at once, again and again, stops after `duration`:
the run starts at its first failure, and starts afresh after an attempt that ran at least `duration`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.spec import RetryPolicy


class Event(enum.StrEnum):
    NO_CAPACITY = "no-capacity"
    ERROR = "error"
    INTERRUPTION = "interruption"


@dataclass(frozen=True)
class Decision:
    retry: bool
    retry_since: float | None  # the start of the current run of failures, to store on the job


def after_failure(
    policy: RetryPolicy | None,
    event: Event,
    now: float,
    retry_since: float | None,
    attempt_started_at: float | None,
) -> Decision:
    """Whether an attempt that ended with `event` at `now` is tried again. Pure."""
    if policy is None or event.value not in policy.on_events:
        return Decision(False, retry_since)
    ran_long = attempt_started_at is not None and now - attempt_started_at >= policy.duration_s
    since = now if retry_since is None or ran_long else retry_since
    return Decision(now - since < policy.duration_s, since)


def waited_too_long(
    policy: RetryPolicy | None, now: float, submitted_at: float, retry_since: float | None
) -> bool:
    """Whether a pending job has waited for room past its `no-capacity` duration (counted from its submit,
    or from the run of failures that sent it back). Without `no-capacity`, a job waits for good."""
    if policy is None or Event.NO_CAPACITY.value not in policy.on_events:
        return False
    return now - max(submitted_at, retry_since or 0.0) > policy.duration_s


def retry_delay_s(failures_in_run: int, base_s: float, max_s: float) -> float:
    """How long after its last attempt ended a retrying job waits for the next: `base_s` after the first
    failure of a run, doubling after each further one, at most `max_s`. Pure."""
    if failures_in_run <= 0 or base_s <= 0:
        return 0.0
    return min(max_s, base_s * 2.0 ** min(failures_in_run - 1, 32))


def next_attempt_at(
    finished_at: list[float | None], retry_since: float | None, base_s: float, max_s: float
) -> float:
    """When a retrying job may be placed again, given when each of its attempts ended (first to last) and
    when its current run of failures began. Pure."""
    ended = [t for t in finished_at if t is not None]
    if not ended:
        return 0.0
    failures = sum(1 for t in ended if t >= (retry_since or 0.0))
    return ended[-1] + retry_delay_s(failures, base_s, max_s)
