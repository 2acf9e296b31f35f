"""The retry policy (dstack's `retry:`), as pure functions over times: no store, no clock.

An attempt that ends badly is an *event*: `error` (it exited non-zero or could not start), `interruption`
(its host was lost, removed, or drained with `--stop`). `no-capacity` is waiting: a job that nothing fits
stays pending, and with `no-capacity` in its policy it waits at most `duration`, then fails with the reason.

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
