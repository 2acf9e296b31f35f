"""The retry policy and the lease arithmetic, as the pure functions they are."""

from __future__ import annotations

from coordinator import leases
from coordinator.retry import Event, after_failure, next_attempt_at, retry_delay_s, waited_too_long
from shared.spec import RetryPolicy

HOUR = RetryPolicy(duration_s=3600)


def test_an_event_outside_the_policy_is_not_retried() -> None:
    errors_only = RetryPolicy(on_events=("error",), duration_s=3600)
    assert not after_failure(errors_only, Event.INTERRUPTION, 100.0, None, 50.0).retry
    assert not after_failure(None, Event.ERROR, 100.0, None, 50.0).retry
    assert after_failure(errors_only, Event.ERROR, 100.0, None, 50.0).retry


def test_a_job_that_keeps_failing_stops_after_the_duration() -> None:
    first = after_failure(HOUR, Event.ERROR, 1000.0, None, 999.0)
    assert (first.retry, first.retry_since) == (True, 1000.0)
    again = after_failure(HOUR, Event.ERROR, 2000.0, first.retry_since, 1999.0)
    assert (again.retry, again.retry_since) == (True, 1000.0)  # the run of failures started at 1000
    late = after_failure(HOUR, Event.ERROR, 4601.0, again.retry_since, 4600.0)
    assert not late.retry


def test_an_attempt_that_ran_the_whole_duration_starts_a_new_run_of_failures() -> None:
    decision = after_failure(HOUR, Event.INTERRUPTION, 90_000.0, 1000.0, 10_000.0)
    assert (decision.retry, decision.retry_since) == (True, 90_000.0)


def test_no_capacity_bounds_waiting_from_the_submit_or_the_last_failures() -> None:
    assert not waited_too_long(RetryPolicy(on_events=("error",), duration_s=10), 1000.0, 0.0, None)
    assert not waited_too_long(None, 1000.0, 0.0, None)
    no_capacity = RetryPolicy(on_events=("no-capacity",), duration_s=10)
    assert waited_too_long(no_capacity, 11.0, 0.0, None)
    assert not waited_too_long(no_capacity, 9.0, 0.0, None)
    assert not waited_too_long(no_capacity, 15.0, 0.0, 8.0)


def test_the_lease_grows_with_the_fleet_and_a_poll_is_held_half_of_it() -> None:
    assert leases.unreachable_after_s(30.0, 10) == 30.0
    assert leases.unreachable_after_s(30.0, 10_000) == 400.0  # 50 heartbeats a second at most
    assert leases.poll_timeout_s(30.0, 30.0) == 15.0
    assert leases.poll_timeout_s(5.0, 400.0) == 5.0


def test_a_restarted_coordinator_counts_every_host_as_seen_when_it_started() -> None:
    assert leases.silent_s(now=130.0, last_seen=None, coordinator_started_at=100.0) == 30.0
    assert leases.silent_s(now=130.0, last_seen=120.0, coordinator_started_at=100.0) == 10.0


def test_lost_after_is_the_jobs_then_the_fleets_then_the_coordinators() -> None:
    assert leases.lost_after_s(20, 60.0, 600.0) == 20.0
    assert leases.lost_after_s(None, 60.0, 600.0) == 60.0
    assert leases.lost_after_s(None, None, 600.0) == 600.0


def test_attempts_of_a_run_of_failures_are_spaced_out_doubling_to_a_cap() -> None:
    assert [retry_delay_s(n, 10, 300) for n in range(7)] == [0, 10, 20, 40, 80, 160, 300]
    assert retry_delay_s(10**6, 10, 300) == 300  # no overflow however long the run
    # attempts ended at 100 and 105 in a run that began at 100: the next waits 20 s after the last
    assert next_attempt_at([100.0, 105.0], 100.0, 10, 300) == 125.0
    # an earlier run's failure (before retry_since) does not count
    assert next_attempt_at([50.0, 100.0], 100.0, 10, 300) == 110.0
    assert next_attempt_at([None], None, 10, 300) == 0.0  # a lost attempt has no end: at once
