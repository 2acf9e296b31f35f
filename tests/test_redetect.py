"""Re-detection: SIGHUP and the periodic timer detect again, a change becomes a new inventory generation, and
the coordinator places nothing on a generation it has not seen."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.agent import detect, run_agent
from agent.blocks import BlocksError
from agent.redetect import redetect_loop, redetect_once
from agent.state import SharedState
from coordinator.logstore import LogStore
from coordinator.service import Coordinator, Settings
from coordinator.store import Store
from shared.spec import parse_spec
from shared.wire import HostView, Inventory, SyncRequest, generation_of
from tests.harness import cluster


def simulated(spec: str, blocks: str | int = "auto") -> Inventory:
    from agent.detect import detect_inventory

    return detect_inventory(state_dir="/", blocks=blocks, simulate=spec)


# --- the agent's side ----------------------------------------------------------------------------------------


async def test_a_changed_inventory_is_published_and_wakes_the_sync_loop() -> None:
    state = SharedState(inventory=simulated("2xH100:80GB"))
    fresh = simulated("4xH100:80GB")

    assert await redetect_once(lambda: fresh, state)

    assert state.inventory == fresh
    assert state.local_changed.is_set()


async def test_the_same_inventory_changes_nothing() -> None:
    state = SharedState(inventory=simulated("2xH100:80GB"))

    assert not await redetect_once(lambda: simulated("2xH100:80GB"), state)
    assert not state.local_changed.is_set()


async def test_a_failed_detection_keeps_the_last_good_inventory_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = simulated("4xH100:80GB", blocks=2)
    state = SharedState(inventory=good)

    def lost_a_gpu() -> Inventory:
        raise BlocksError(
            "blocks: 2 does not divide the 3 GPUs of this host; use a divisor of 3 (1, 3) or auto"
        )

    assert await redetect_once(lost_a_gpu, state)
    assert state.inventory is not None
    assert state.inventory.gpus == good.gpus and state.inventory.blocks == good.blocks
    assert state.inventory.warnings == (
        "re-detection failed: blocks: 2 does not divide the 3 GPUs of this host; use a divisor of 3 (1, 3) or "
        "auto; the inventory shown is the last good one",
    )
    assert "re-detection failed" in caplog.text
    assert not await redetect_once(lost_a_gpu, state)  # said once, not piled up
    assert await redetect_once(lambda: good, state)  # and gone once detection works again
    assert state.inventory == good


async def test_the_loop_runs_on_request_and_reports_the_change() -> None:
    state = SharedState(inventory=simulated("2xH100:80GB"))
    fresh = simulated("2xA100:80GB")
    changed = asyncio.Event()
    task = asyncio.create_task(
        redetect_loop(lambda: fresh, state, interval_s=3600, on_change=lambda inv: changed.set())
    )
    try:
        state.redetect_requested.set()
        async with asyncio.timeout(5):
            await changed.wait()
    finally:
        task.cancel()
    assert state.inventory == fresh


async def test_the_loop_also_runs_on_its_timer() -> None:
    # A host whose GPU count flips every detection: each timer tick is a change.
    shapes = [simulated("2xH100:80GB"), simulated("1xH100:80GB")]
    state = SharedState(inventory=shapes[0])
    ticks: list[int] = []
    third = asyncio.Event()

    def tick(inventory: Inventory) -> None:
        ticks.append(len(inventory.gpus))
        if len(ticks) == 3:
            third.set()

    task = asyncio.create_task(
        redetect_loop(lambda: shapes[len(ticks) % 2 == 0], state, interval_s=0.02, on_change=tick)
    )
    try:
        async with asyncio.timeout(5):
            await third.wait()
    finally:
        task.cancel()
    assert ticks[:3] == [1, 2, 1]


# --- the coordinator's side ----------------------------------------------------------------------------------


@pytest.fixture
def coordinator(tmp_path: Path, database: Path | str) -> Iterator[Coordinator]:
    coord = Coordinator(Store(database), LogStore(tmp_path / "logs"), Settings(poll_timeout_s=0.05))
    yield coord
    coord.store.close()


def sync_request(inventory: Inventory, send: bool) -> SyncRequest:
    return SyncRequest(
        agent_version="test",
        inventory_generation=generation_of(inventory),
        inventory=inventory if send else None,
    )


async def test_nothing_is_placed_on_a_generation_the_coordinator_has_not_seen(
    coordinator: Coordinator,
) -> None:
    old, new = simulated("2xH100:80GB"), simulated("4xH100:80GB")
    await coordinator.sync("h1", sync_request(old, send=True))
    # The agent moved on to `new` but believes the coordinator has it (a restored database, a lost write).
    answer = await coordinator.sync("h1", sync_request(new, send=False))

    assert answer.inventory_generation == generation_of(old)  # so the agent sends `new` next time
    job = coordinator.submit(parse_spec("commands: [x]\nresources: {gpu: 1}\n"))
    assert (job.status.value, job.reason) == (
        "pending",
        f"the hosts that fit this job are not ready: {old.hostname} (its inventory is not here yet)",
    )

    answer = await coordinator.sync("h1", sync_request(new, send=True))

    assert answer.inventory_generation == generation_of(new)
    placed = coordinator.store.get_job(job.id)
    assert placed is not None and placed.status.value == "assigned"
    assert [a.gpus for a in coordinator.store.active_allocations("h1")] == [(0,)]


async def test_an_unseen_generation_is_answered_at_once(coordinator: Coordinator) -> None:
    coordinator.settings = Settings(poll_timeout_s=30)
    old, new = simulated("2xH100:80GB"), simulated("4xH100:80GB")
    await coordinator.sync("h1", sync_request(old, send=True))

    async with asyncio.timeout(5):  # not held for the 30 s long poll
        await coordinator.sync("h1", SyncRequest("test", generation_of(new), None, desired_index=99))


# --- end to end: SIGHUP on a running agent -------------------------------------------------------------------


async def test_sighup_sends_the_new_inventory_and_jobs_use_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gpuctl.agent")
    async with cluster() as c:
        config = c.agent_config("host-h", "2xH100:80GB")
        devices = {"spec": "2xH100:80GB"}

        def redetect() -> Inventory:
            return detect(dataclasses.replace(config, simulate=devices["spec"]))

        c.agents["host-h"] = asyncio.create_task(run_agent(config, detect(config), redetect=redetect))
        before = await wait_for_host(c.api.hosts, "host-h", gpus=2)
        job = await c.submit("commands: [true]\nresources: {gpu: 4}")
        assert job.status == "pending"

        devices["spec"] = "4xH100:80GB"
        os.kill(os.getpid(), signal.SIGHUP)

        after = await wait_for_host(c.api.hosts, "host-h", gpus=4)
        assert before.inventory is not None and after.inventory is not None
        assert generation_of(after.inventory) != generation_of(before.inventory)
        done = await c.wait_for(job.id, "done", timeout_s=60)
        assert done.gpus == (0, 1, 2, 3)
        assert "inventory changed" in caplog.text


async def wait_for_host(hosts: object, name: str, gpus: int) -> HostView:
    async with asyncio.timeout(30):
        while True:
            views = await asyncio.to_thread(hosts)  # type: ignore[arg-type]
            for view in views:
                if view.name == name and view.inventory is not None and len(view.inventory.gpus) == gpus:
                    return view
            await asyncio.sleep(0.1)
