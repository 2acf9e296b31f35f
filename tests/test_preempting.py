"""Preemption end to end: a real coordinator and real agents (simulated GPUs, plain processes). In a fleet
with `preemption: true` a job of higher priority stops running lower-priority work, an interruption for the
victim's retry policy; elsewhere, or at equal priority, nothing is stopped."""

from __future__ import annotations

import asyncio

import pytest

from shared.wire import FleetSet, JobView
from tests.harness import Cluster, cluster
from tests.test_schedules import restart

pytestmark = pytest.mark.asyncio

LOW = """
name: low
priority: {priority}
resources: {{gpu: 1}}
commands: [sleep 600]
{retry}
"""
HIGH = "name: high\npriority: 10\nresources: {gpu: 1}\ncommands: [echo high ran]\n"
RETRY = "retry: {on_events: [interruption], duration: 1h}"


async def one_busy_host(c: Cluster, preemption: bool, priority: int = 0, retry: str = "") -> JobView:
    """One host of one block in the default fleet (with or without preemption), running a job of
    `priority` that sleeps."""
    await asyncio.to_thread(c.api.set_fleet, FleetSet(name="default", preemption=preemption))
    c.start_agent("h1", "1xH100:80GB")
    low = await c.submit(LOW.format(priority=priority, retry=retry))
    return await c.wait_for(low.id, "running")


def desired(c: Cluster, job_id: str) -> list[str]:
    return [a.desired for a in c.coordinator.coordinator.store.allocations_of(job_id)]


async def test_a_higher_priority_job_stops_a_lower_one_which_retries_after_it() -> None:
    async with cluster() as c:
        low = await one_busy_host(c, preemption=True, retry=RETRY)
        high = await c.submit(HIGH)
        assert (high.status, high.reason) == (
            "pending",
            f"waiting for preempted job {low.id} (priority 0) to stop on host h1",
        )
        assert await c.full_log(high.id) == b"high ran\n"
        assert (await c.job(high.id)).status == "done"
        again = await c.wait_for(low.id, "running")  # its retry, once the high one left the block
        await asyncio.to_thread(c.api.stop, low.id)
    first = again.attempts[0]
    assert (first.status, first.reason) == ("stopped", f"preempted by job {high.id} (priority 10)")
    assert [a.attempt for a in again.attempts] == [1, 2]


async def test_a_victim_without_a_retry_policy_ends_with_the_reason() -> None:
    async with cluster() as c:
        low = await one_busy_host(c, preemption=True)
        high = await c.submit(HIGH)
        stopped = await c.wait_for(low.id, "stopped", "failed", "done")
        await c.wait_for(high.id, "done")
    assert (stopped.status, stopped.reason) == ("stopped", f"preempted by job {high.id} (priority 10)")


async def test_a_fleet_without_preemption_keeps_the_lower_priority_job_running() -> None:
    async with cluster() as c:
        low = await one_busy_host(c, preemption=False)
        high = await c.submit(HIGH)
        c.coordinator.coordinator.kick()  # a whole re-sync, as the housekeeping beat makes
        assert_busy((await c.job(high.id)).reason)
        assert (await c.job(low.id)).status == "running"
        assert desired(c, low.id) == ["run"]
        await asyncio.to_thread(c.api.stop, low.id)
        await c.wait_for(high.id, "done")


async def test_equal_priority_never_preempts() -> None:
    async with cluster() as c:
        low = await one_busy_host(c, preemption=True, priority=10)
        high = await c.submit(HIGH)
        c.coordinator.coordinator.kick()
        assert_busy((await c.job(high.id)).reason)
        assert desired(c, low.id) == ["run"]
        await asyncio.to_thread(c.api.stop, low.id)
        await c.wait_for(high.id, "done")


async def test_a_job_preempts_once_while_its_victim_stops() -> None:
    """Its victim ignores SIGTERM for a while: the re-syncs meanwhile stop nothing more."""
    async with cluster() as c:
        await asyncio.to_thread(c.api.set_fleet, FleetSet(name="default", preemption=True))
        c.start_agent("h1", "2xH100:80GB")
        stubborn = "priority: 0\nresources: {gpu: 1}\ncommands: [\"trap '' TERM; sleep 600\"]\n"
        first = await c.submit("name: first\n" + stubborn)
        second = await c.submit("name: second\n" + stubborn)
        await c.wait_for(first.id, "running")
        await c.wait_for(second.id, "running")
        high = await c.submit(HIGH)
        for _ in range(3):
            c.coordinator.coordinator.kick()
        assert sorted(desired(c, first.id) + desired(c, second.id)) == ["run", "stop"]
        assert (await c.job(high.id)).reason.startswith("waiting for preempted job ")
        await c.wait_for(high.id, "done")  # the stubborn one is killed after its grace period


async def test_a_job_whose_victim_ended_is_told_its_own_reason_again() -> None:
    """A job of yet higher priority came while the victim stopped, and took its block: the preempting job
    waits on, and says why as any pending job does (the first waiting job, it holds the block in reserve)."""
    async with cluster() as c:
        await asyncio.to_thread(c.api.set_fleet, FleetSet(name="default", preemption=True))
        c.start_agent("h1", "1xH100:80GB")
        low = await c.submit("priority: 0\nresources: {gpu: 1}\ncommands: [\"trap '' TERM; sleep 600\"]\n")
        await c.wait_for(low.id, "running")
        high = await c.submit(HIGH)
        assert high.reason.startswith("waiting for preempted job ")
        top = await c.submit("priority: 20\nresources: {gpu: 1}\ncommands: [sleep 600]\n")
        assert_busy(top.reason)  # its victim would be stopping
        await c.wait_for(top.id, "running")
        assert_busy((await c.job(high.id)).reason)
        await asyncio.to_thread(c.api.stop, top.id)
        await c.wait_for(high.id, "done")


async def test_a_restarted_coordinator_still_waits_for_the_victim_and_preempts_no_more() -> None:
    """The agent is away while the victim should stop, so it cannot: after a restart of the coordinator,
    its re-syncs find the job waiting for it (the store says so), and stop nothing more."""
    async with cluster() as c:
        await asyncio.to_thread(c.api.set_fleet, FleetSet(name="default", preemption=True))
        c.start_agent("h1", "2xH100:80GB")
        first = await c.submit("name: first\nresources: {gpu: 1}\ncommands: [sleep 600]\n")
        second = await c.submit("name: second\nresources: {gpu: 1}\ncommands: [sleep 600]\n")
        await c.wait_for(first.id, "running")
        await c.wait_for(second.id, "running")
        await c.stop_agent("h1")
        high = await c.submit(HIGH)
        await restart(c)
        for _ in range(3):
            c.coordinator.coordinator.kick()
        assert sorted(desired(c, first.id) + desired(c, second.id)) == ["run", "stop"]
        assert (await c.job(high.id)).reason == high.reason
        c.start_agent("h1", "2xH100:80GB")  # it stops the victim; the high job takes its block
        assert await c.full_log(high.id) == b"high ran\n"
    assert high.reason.startswith("waiting for preempted job ")


async def test_a_multi_node_victim_stops_on_every_node_and_ends_as_one() -> None:
    async with cluster() as c:
        await asyncio.to_thread(
            c.api.set_fleet, FleetSet(name="default", placement="cluster", preemption=True)
        )
        for i, name in enumerate(("a", "b")):
            c.start_agent(name, "1xH100:80GB", internal_ip=f"127.0.0.{i + 1}")
        pair = await c.submit("name: pair\nnodes: 2\nresources: {gpu: 1}\ncommands: [sleep 600]\n")
        await c.wait_for(pair.id, "running")
        high = await c.submit(HIGH)
        stopped = await c.wait_for(pair.id, "stopped", "failed", "done")
        await c.wait_for(high.id, "done")
        allocs = c.coordinator.coordinator.store.allocations_of(pair.id)
    assert (stopped.status, stopped.reason) == ("stopped", f"preempted by job {high.id} (priority 10)")
    assert [(a.node, a.desired, a.interrupted) for a in allocs] == [
        (0, "stop", f"preempted by job {high.id} (priority 10)"),
        (1, "stop", f"preempted by job {high.id} (priority 10)"),
    ]


def assert_busy(reason: str) -> None:
    """The reason of a job that waits for a block and preempts nothing; the first waiting job holds the block
    in reserve once the backfill plan has run (at most a second later, or at the beat)."""
    assert reason in (BUSY, BUSY + "; blocks reserved on h1")


BUSY = "no host with 1 free blocks; largest free: 0"
