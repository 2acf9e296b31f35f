"""Leases: a silent host takes no new work and its allocations show `unknown`; past `lost_after` they are
lost. A host that comes back gets back what was not placed again, with its log whole, and stops what was.
The hosts fall silent the hard way: their agent is stopped while their jobs run on."""

from __future__ import annotations

import asyncio

from tests.faults import SHORT_LEASES, host_status, wait_host, wait_stopped
from tests.harness import cluster

TICKS = """
commands:
  - for n in $(seq 0 79); do echo "tick $n"; sleep 0.1; done
"""


async def test_a_silent_host_is_unreachable_then_its_job_lost_and_a_return_resumes_it() -> None:
    async with cluster(SHORT_LEASES) as c:
        c.start_agent("h1", "1xH100:80GB")
        job = await c.submit(TICKS)
        running = await c.wait_for(job.id, "running")
        await c.stop_agent("h1")  # its job runs on, unseen
        await wait_host(c, "h1", "unreachable", timeout_s=10)
        view = await c.job(job.id)
        assert (view.status, view.allocation_status) == ("running", "unknown")
        assert view.reason.startswith("unreachable for ")
        other = await c.submit("commands: [true]\nresources: {gpu: 0}\n")
        await asyncio.sleep(0.5)
        assert (await c.job(other.id)).status == "pending", "an unreachable host took new work"
        lost = await c.wait_for(job.id, "lost", timeout_s=10)
        assert lost.reason.startswith("host h1 was silent for ")
        assert lost.attempts[0].status == "lost"
        c.start_agent("h1", "1xH100:80GB")
        back = await c.wait_for(job.id, "running", "done", timeout_s=15)
        assert (back.attempt, back.allocation_id) == (1, running.allocation_id)
        log = (await c.full_log(job.id, timeout_s=30)).decode()
        assert log.splitlines() == [f"tick {n}" for n in range(80)], "the log lost bytes on the way"
        assert (await c.job(job.id)).status == "done"
        await c.wait_for(other.id, "done")  # the host takes work again


async def test_stop_of_a_job_on_an_unreachable_host_ends_stopped_once_lost() -> None:
    async with cluster(SHORT_LEASES) as c:
        config = c.start_agent("h1", "1xH100:80GB")
        job = await c.submit(TICKS)
        await c.wait_for(job.id, "running")
        await c.stop_agent("h1")
        await wait_host(c, "h1", "unreachable", timeout_s=10)
        stopping = await asyncio.to_thread(c.api.stop, job.id)
        assert (stopping.status, stopping.stop_requested) == ("running", True)  # `gpuctl ps`: stopping
        stopped = await c.wait_for(job.id, "stopped", timeout_s=10)
        assert stopped.reason.startswith("host h1 was silent for ")
        c.start_agent("h1", "1xH100:80GB")  # it comes back: the job it still runs must stop
        (alloc_dir,) = config.state_dir.glob("allocs/*")
        await wait_stopped(alloc_dir, timeout_s=5)  # well before its 8 s of ticks end
        assert (await c.job(job.id)).status == "stopped"
        assert await host_status(c, "h1") == "ready"
