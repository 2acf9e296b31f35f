"""GPU health end to end: a real coordinator and agent, the fake NVML replaying an XID 79 on a job's GPU."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.agent import detect, run_agent
from agent.health_nvidia import NvmlWatch
from agent.health_watch import ECC_UNCORRECTED_LIMIT
from cli.api import Api
from coordinator.validate_inventory import inventory_problem
from shared.wire import GpuHealth, HostView
from tests.fakes import fake_nvml, fixture_inventory, load
from tests.harness import Cluster, cluster, reachable_tmpdir
from tests.test_arrays import cli

SLEEPER = "name: {name}\nresources: {{gpu: {gpus}}}\ncommands:\n  - sleep 300\n"
XID_79 = "XID 79 (fallen off the bus)"


def start_watched_agent(c: Cluster, name: str) -> SimpleNamespace:
    """An agent with 2 simulated GPUs in 2 blocks whose health is read from a fake NVML (returned)."""
    nvml = fake_nvml(load("nvml", "h100_sxm_8"))
    config = c.agent_config(name, "2xH100:80GB", 2)
    c.agents[name] = asyncio.create_task(
        run_agent(config, detect(config), nvml=nvml, health_interval_s=0.05), name=f"agent-{name}"
    )
    return nvml


async def host_view(api: Api, name: str) -> HostView | None:
    """The host, once its agent's first sync registered it."""
    return next((h for h in await asyncio.to_thread(api.hosts) if h.name == name), None)


async def wait_host(api: Api, name: str, ready: Callable[[HostView], bool]) -> HostView:
    async with asyncio.timeout(60):
        while True:
            host = await host_view(api, name)
            if host is not None and ready(host):
                return host
            await asyncio.sleep(0.05)


async def wait_reason(c: Cluster, job_id: str, words: str) -> str:
    async with asyncio.timeout(60):
        while True:
            job = await c.job(job_id)
            if words in job.reason:
                return job.status
            await asyncio.sleep(0.05)


async def test_xid_79_idles_its_block_until_undrain(tmp_path: Path) -> None:
    async with cluster() as c:
        nvml = start_watched_agent(c, "h1")
        first = await c.submit(SLEEPER.format(name="first", gpus=1))
        running = await c.wait_for(first.id, "running")
        (gpu,) = running.gpus
        nvml.xids.append((gpu, 79))

        host = await wait_host(c.api, "h1", lambda h: bool(h.unhealthy))
        assert host.unhealthy == (GpuHealth(index=gpu, reason=XID_79),)
        for words in (("hosts",), ("hosts", "h1")):  # the list, and the host's own page
            code, out = await asyncio.to_thread(cli, c.api, tmp_path, *words)
            assert code == 0, out
            assert "h1: 1 GPU unhealthy: XID 79 (fallen off the bus)" in " ".join(out.split()), words
        assert (await c.job(first.id)).status == "running"  # running work finishes

        await asyncio.to_thread(c.api.stop, first.id)
        await c.wait_for(first.id, "stopped")
        both = await c.submit(SLEEPER.format(name="both", gpus=2))
        one = await c.submit(SLEEPER.format(name="one", gpus=1))
        await c.wait_for(one.id, "running")  # the healthy block still takes work
        assert await wait_reason(c, both.id, f"h1: GPU {gpu} unhealthy: {XID_79}") == "pending"

        await c.stop_agent("h1")  # the device recovered: a fresh agent reports nothing
        start_watched_agent(c, "h1")
        await asyncio.to_thread(c.api.stop, one.id)
        await c.wait_for(one.id, "stopped")
        host = await wait_host(c.api, "h1", lambda h: h.inventory is not None and not h.inventory.unhealthy)
        assert host.unhealthy, "recovery needs an undrain"
        assert (await c.job(both.id)).status == "pending"
        await asyncio.to_thread(c.api.undrain_host, "h1")
        await c.wait_for(both.id, "running")
        assert not (await wait_host(c.api, "h1", lambda h: True)).unhealthy


@pytest.mark.parametrize(
    ("unhealthy", "problem"),
    [
        ((GpuHealth(index=9, reason="XID 79"),), "inventory.unhealthy[0].index: GPU 9 is not among"),
        ((GpuHealth(index=1, reason="a"), GpuHealth(index=1, reason="b")), "inventory.unhealthy[1].index"),
    ],
)
def test_bad_health_report_is_refused_naming_the_field(
    tmp_path: Path, unhealthy: tuple[GpuHealth, ...], problem: str
) -> None:
    import msgspec

    inventory = fixture_inventory(tmp_path, "nvml", "h100_sxm_8")
    assert inventory_problem(inventory) is None
    assert (inventory_problem(msgspec.structs.replace(inventory, unhealthy=unhealthy)) or "").startswith(
        problem
    )


def test_watch_marks_lost_devices_and_ecc_past_the_limit_but_not_other_xids() -> None:
    fixture = load("nvml", "h100_sxm_8")
    fixture["devices"][2]["ecc_uncorrected"] = ECC_UNCORRECTED_LIMIT
    fixture["devices"][3]["ecc_uncorrected"] = ECC_UNCORRECTED_LIMIT - 1
    nvml = fake_nvml(fixture)
    watch = NvmlWatch(nvml)
    nvml.xids.append((0, 13))  # a graphics engine exception: the application's fault, not the GPU's
    nvml.lost.add(5)
    assert watch.check() == (
        GpuHealth(index=2, reason=f"{ECC_UNCORRECTED_LIMIT} uncorrectable ECC errors"),
        GpuHealth(index=5, reason="fallen off the bus"),
    )
    nvml.lost.clear()  # back on the bus: a state, read again each time
    nvml.xids.append((4, 48))
    assert watch.check() == (
        GpuHealth(index=2, reason=f"{ECC_UNCORRECTED_LIMIT} uncorrectable ECC errors"),
        GpuHealth(index=4, reason="XID 48 (double-bit ECC error)"),
    )
    watch.close()
    assert nvml.calls == ["init", "shutdown"]


async def test_work_on_an_unhealthy_block_finishes_unless_drain_stop_stops_it() -> None:
    go = reachable_tmpdir() / "go"  # the waiter runs until it exists
    waiter = f"name: waiter\nresources: {{gpu: 1}}\ncommands:\n  - 'until [ -e {go} ]; do sleep 0.05; done; echo finished'\n"
    async with cluster() as c:
        nvml = start_watched_agent(c, "h1")
        waiting = await c.submit(waiter)
        sleeping = await c.submit(SLEEPER.format(name="sleeper", gpus=1))
        for job in (waiting, sleeping):
            (gpu,) = (await c.wait_for(job.id, "running")).gpus
            nvml.xids.append((gpu, 79))
        await wait_host(c.api, "h1", lambda h: len(h.unhealthy) == 2)

        go.touch()
        await c.wait_for(waiting.id, "done")
        assert await c.full_log(waiting.id) == b"finished\n"
        assert (await c.job(sleeping.id)).status == "running"
        await asyncio.to_thread(c.api.drain_host, "h1", True)
        stopped = await c.wait_for(sleeping.id, "stopped")
        assert stopped.attempts[-1].reason == "host h1 was drained with --stop"
