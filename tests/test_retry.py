"""`retry:`, one test per event: error (the job exits non-zero), interruption (a lost host; a drain with
--stop), no-capacity (waiting, bounded by the duration). Each attempt is an allocation of its own, with its
own log (`gpuctl logs --attempt N`)."""

from __future__ import annotations

import asyncio
import dataclasses

from tests.faults import SHORT_LEASES, shared_dir, wait_attempt, wait_stopped
from tests.harness import FAST, cluster

FAILS_ONCE = """
retry: {{on_events: [error], duration: 1h}}
commands:
  - if [ -e {marker} ]; then echo "second try"; else touch {marker}; echo "first try"; exit 3; fi
"""

TICKS = """
retry: {on_events: [interruption], duration: 1h}
resources: {gpu: 1}
commands:
  - for n in $(seq 0 79); do echo "tick $n"; sleep 0.1; done
"""


async def test_retry_on_error_runs_a_new_attempt_and_keeps_each_attempts_log() -> None:
    async with cluster() as c:
        c.start_agent("h1", "1xH100:80GB")
        marker = shared_dir(c) / "tried"
        job = await c.submit(FAILS_ONCE.format(marker=marker))
        done = await c.wait_for(job.id, "done", "failed", timeout_s=30)
        assert (done.status, done.attempt) == ("done", 2)
        first, second = done.attempts
        assert (first.attempt, first.status, first.exit_code, first.host) == (1, "exited", 3, "h1")
        assert (second.attempt, second.status, second.exit_code) == (2, "exited", 0)
        assert first.allocation_id != second.allocation_id
        assert first.finished_at is not None and second.placed_at is not None
        assert await c.full_log(job.id) == b"second try\n"
        chunk = await asyncio.to_thread(c.api.logs, job.id, 0, False, 1)
        assert (chunk.data, chunk.complete) == (b"first try\n", True)


async def test_without_retry_an_error_ends_the_job() -> None:
    async with cluster() as c:
        c.start_agent("h1", "1xH100:80GB")
        marker = shared_dir(c) / "tried"
        job = await c.submit(
            FAILS_ONCE.format(marker=marker).replace("retry: {on_events: [error], duration: 1h}", "")
        )
        failed = await c.wait_for(job.id, "done", "failed", timeout_s=30)
        assert (failed.status, failed.exit_code, failed.attempt) == ("failed", 3, 1)


async def test_a_lost_host_is_an_interruption_and_its_return_stops_the_replaced_attempt() -> None:
    async with cluster(SHORT_LEASES) as c:
        configs = {name: c.start_agent(name, "1xH100:80GB") for name in ("h1", "h2")}
        job = await c.submit(TICKS)
        first = await c.wait_for(job.id, "running")
        silent = first.host
        assert silent is not None
        await c.stop_agent(silent)
        second = await wait_attempt(c, job.id, 2, "running")
        assert second.host != silent
        assert [a.status for a in second.attempts] == ["lost", "running"]
        assert second.attempts[0].reason.startswith(f"host {silent} was silent for ")
        c.start_agent(silent, "1xH100:80GB")  # it still runs attempt 1, which was placed again: it stops
        (alloc_dir,) = configs[silent].state_dir.glob("allocs/*")
        await wait_stopped(alloc_dir, timeout_s=5)
        assert (await c.job(job.id)).attempts[0].status == "lost"
        log = (await c.full_log(job.id, timeout_s=30)).decode()
        assert log.splitlines() == [f"tick {n}" for n in range(80)]  # attempt 2 ran whole
        assert (await c.job(job.id)).status == "done"


async def test_a_drain_with_stop_is_an_interruption() -> None:
    async with cluster() as c:
        for name in ("h1", "h2"):
            c.start_agent(name, "1xH100:80GB")
        job = await c.submit(TICKS)
        first = await c.wait_for(job.id, "running")
        await asyncio.to_thread(c.api.drain_host, first.host or "", True)
        view = await wait_attempt(c, job.id, 2, "running")
        assert view.host != first.host
        assert view.attempts[0].status == "stopped"
        assert view.attempts[0].reason == f"host {first.host} was drained with --stop"


async def test_no_capacity_waits_for_the_duration_then_fails_with_the_reason() -> None:
    async with cluster() as c:
        c.start_agent("h1", "1xH100:80GB")
        job = await c.submit(
            "commands: [true]\nresources: {gpu: 2}\nretry: {on_events: [no-capacity], duration: 1s}\n"
        )
        assert (await c.job(job.id)).status == "pending"
        failed = await c.wait_for(job.id, "failed", timeout_s=15)
        assert failed.reason.startswith("no capacity for 1s: "), failed.reason
        assert "no host" in failed.reason


async def test_a_job_that_always_fails_is_retried_with_growing_pauses_not_in_a_tight_loop() -> None:
    """Crash-loop back-off: with a 0.5 s base, attempts end near 0, 0.5, 1.5, 3.5 and 7.5 s; spinning
    would make dozens in the same time."""
    async with cluster(dataclasses.replace(FAST, retry_delay_s=0.5, retry_delay_max_s=60)) as c:
        c.start_agent("h1", "1xH100:80GB")
        job = await c.submit("retry: {on_events: [error], duration: 1h}\ncommands: [exit 5]\n")
        await asyncio.sleep(6)
        now = await c.job(job.id)
        assert now.status in ("retrying", "pending", "assigned", "running"), now
        assert 3 <= now.attempt <= 5, now.attempt
        assert "retrying on error" in now.reason or now.status != "retrying", now.reason
