"""Draining a host: no new work, what runs finishes; undrain takes it back. Removing a host that still
runs work needs --force."""

from __future__ import annotations

import asyncio

import pytest

from cli.api import ApiError
from tests.faults import host_status
from tests.harness import cluster

LONG = "commands: ['sleep 300']\nresources: {gpu: 1}\n"


async def test_a_drained_host_takes_no_new_work_and_its_running_job_finishes() -> None:
    async with cluster() as c:
        c.start_agent("h1", "2xH100:80GB")
        running = await c.submit("commands: ['sleep 2; echo finished']\nresources: {gpu: 1}\n")
        await c.wait_for(running.id, "running")
        drained = await asyncio.to_thread(c.api.drain_host, "h1")
        assert drained["status"] == "draining"
        assert await host_status(c, "h1") == "draining"
        waiting = await c.submit("commands: [true]\nresources: {gpu: 1}\n")
        pending = await c.job(waiting.id)
        assert pending.status == "pending", "a draining host took new work"
        assert pending.reason == "the hosts that fit this job are not ready: h1 (draining)"
        assert await c.full_log(running.id) == b"finished\n"
        assert (await c.job(running.id)).status == "done"
        assert (await c.job(waiting.id)).status == "pending"
        undrained = await asyncio.to_thread(c.api.undrain_host, "h1")
        assert undrained["status"] == "ready"
        await c.wait_for(waiting.id, "done")


async def test_removing_a_busy_host_needs_force_and_then_its_job_is_lost() -> None:
    async with cluster() as c:
        c.start_agent("h1", "1xH100:80GB")
        job = await c.submit(LONG)
        await c.wait_for(job.id, "running")
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(c.api.remove_host, "h1")
        assert str(refused.value) == (
            f"host h1 still runs 1 job(s) ({job.id}); drain it first (gpuctl hosts drain h1), or remove it "
            "with --force and they are lost"
        )
        assert await host_status(c, "h1") == "ready"
        removed = await asyncio.to_thread(c.api.remove_host, "h1", True)
        assert removed["status"] == "removed"
        lost = await c.job(job.id)
        assert (lost.status, lost.reason) == ("lost", "host h1 was removed")
        async with asyncio.timeout(30):  # refused, it stops its job and exits (tests/test_revoke.py)
            with pytest.raises(ExceptionGroup):
                await c.agents.pop("h1")
