"""Leases: a silent host takes no new work and its allocations show `unknown`; past `lost_after` they are
lost. A host that comes back gets back what was not placed again, with its log whole, and stops what was.
The hosts fall silent the hard way: their agent is stopped while their jobs run on."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgspec
import pytest

from agent.agent import detect
from coordinator import server
from shared.wire import SyncResponse
from tests.agent_session import agent_session, sync_body
from tests.faults import SHORT_LEASES, host_status, wait_attempt, wait_host, wait_stopped
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


async def test_between_full_re_syncs_a_host_whose_lease_ran_out_takes_no_new_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large fleet's beat re-syncs in full only now and then; the beats between tell the scheduler of
    the hosts whose lease ran out."""
    monkeypatch.setattr(server, "RESYNC_LOOP_SHARE", 1e-9)  # past the first ones, no full re-sync comes
    async with cluster(SHORT_LEASES) as c:
        c.start_agent("h1", "2xH100:80GB")  # a GPU stays free
        job = await c.submit(TICKS)
        await c.wait_for(job.id, "running")
        await c.stop_agent("h1")
        await wait_host(c, "h1", "unreachable", timeout_s=10)
        await asyncio.sleep(0.5)  # two beats
        other = await c.submit("commands: [true]\nresources: {gpu: 1}\n")
        await asyncio.sleep(0.5)
        assert (await c.job(other.id)).status == "pending", "an unreachable host took new work"


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


async def _sync(session: aiohttp.ClientSession, body: dict) -> SyncResponse:
    async with session.post("/agent/v1/sync", data=json.dumps(body)) as resp:
        assert resp.status == 200, await resp.text()
        return msgspec.json.decode(await resp.read(), type=SyncResponse)


async def test_a_returning_host_is_sent_an_explicit_stop_for_a_replaced_allocation() -> None:
    """At the protocol level: leaving the allocation out would stop it too (as unknown), but only an
    explicit desired `stop` says that the coordinator knows it and wants it ended."""
    async with cluster(SHORT_LEASES) as c, agent_session(c.coordinator, "h1", c.root) as h1:
        hello = json.loads(sync_body(detect(c.agent_config("h1", "1xH100:80GB"))))
        answer = await _sync(h1, hello)
        job = await c.submit("retry: {on_events: [interruption]}\n" + TICKS)
        async with asyncio.timeout(10):
            while not answer.allocations:  # the long poll answers once the job is placed here
                answer = await _sync(h1, {**hello, "inventory": None, "desired_index": answer.index})
        (placed,) = answer.allocations
        assert (placed.job_id, placed.desired) == (job.id, "run")
        c.start_agent("h2", "1xH100:80GB")  # h1 falls silent; the next attempt goes here
        second = await wait_attempt(c, job.id, 2, "running", timeout_s=20)
        assert (second.host, second.attempts[0].allocation_id) == ("h2", placed.id)
        still_running = {"id": placed.id, "state": "running", "log_size": 0}
        back = await _sync(h1, {**hello, "allocations": [still_running], "desired_index": 0})
        assert [(a.id, a.desired) for a in back.allocations] == [(placed.id, "stop")]
