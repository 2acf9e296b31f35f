"""Scheduling in the coordinator (coordinator/scheduling.py): changes alone keep the queue moving, and the
housekeeping beat's re-sync finds nothing they missed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.host_problems import INVENTORY
from coordinator.logstore import LogStore
from coordinator.service import Coordinator
from coordinator.settings import Settings
from coordinator.store import Store
from shared import tls
from shared.spec import parse_spec
from shared.states import AllocState, JobState
from shared.wire import generation_of
from tests.harness import cluster
from tests.test_store import inventory

JOB = "type: task\ncommands: [sleep 0.2]\nresources: {gpu: H100:1}\n"
LONGER = JOB.replace("sleep 0.2", "sleep 2")  # still running while the others queue behind it


async def test_a_queue_behind_one_gpu_drains_through_the_changes_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the beat's re-sync switched off, each job's end (told by the agent's sync) places the next;
    afterwards a re-sync from the store finds nothing to place and no reason to change."""
    async with cluster() as c:
        coord = c.coordinator.coordinator
        c.start_agent("h1", "1xH100:80GB")
        first = await c.submit(LONGER)  # the first kick re-syncs the whole state
        await c.wait_for(first.id, "assigned", "running")
        resync = coord.schedule_pass
        monkeypatch.setattr(coord, "schedule_pass", lambda: 0)  # the beat, and any kick naming nothing
        jobs = [await c.submit(JOB) for _ in range(3)]
        assert (await c.job(jobs[-1].id)).reason == "no host with 1 free H100 blocks; largest free: 0"
        for job in jobs:
            assert (await c.wait_for(job.id, "done", "failed")).status == "done"
        monkeypatch.setattr(coord, "schedule_pass", resync)
        assert coord.schedule_pass() == 0
        assert coord.live.pending() == {}


# What changes with no one telling the live state (time, a refusal) and the array limit's glue, on a real
# Coordinator and Store with one registered host and no agent: each incremental answer must be what the
# housekeeping beat's full re-sync would give.


@pytest.fixture
def coord(tmp_path: Path, database: Path | str) -> Iterator[Coordinator]:
    settings = Settings(poll_timeout_s=5.0, unreachable_after_s=30.0, retry_delay_s=60.0)
    coord = Coordinator(Store(database), LogStore(tmp_path / "logs"), tls.create_ca(), settings)
    inv = inventory()
    coord.store.ensure_host("h1", "h1")
    coord.store.set_inventory("h1", inv, generation_of(inv))
    coord.last_seen["h1"] = time.time()
    coord.schedule_pass()  # the first beat: from here on, kicks are incremental
    yield coord
    coord.store.close()


def test_a_host_whose_lease_ran_out_takes_no_job_before_the_beat_says_so(coord: Coordinator) -> None:
    coord.started_at -= 120
    coord.last_seen["h1"] = time.time() - 60  # silent past its lease, and no change told of it

    job = coord.submit(parse_spec(JOB))

    assert (job.status, job.reason) == (
        JobState.PENDING,
        "the hosts that fit this job are not ready: dgx1 (unreachable)",
    )


def test_a_host_whose_inventory_was_refused_takes_no_job_before_the_beat(coord: Coordinator) -> None:
    coord.problems.set("h1", INVENTORY, "inventory refused: gpus[0].index: repeated")

    job = coord.submit(parse_spec(JOB))

    assert job.status is JobState.PENDING
    assert "refused" in job.reason


def test_tasks_waiting_out_a_retry_take_no_room_under_an_array_limit(coord: Coordinator) -> None:
    """Array 0-2%2 whose tasks 0 and 1 failed into a long back-off: task 2 runs, as a full pass would."""
    array = coord.submit_array(parse_spec(JOB), "0-2%2")
    first, second, third = coord.arrays.tasks(array.id, True)
    for task in (first, second):
        with coord.store.tx() as db:
            alloc = coord.store.latest_allocation(task.id)
            assert alloc is not None
            coord.store.update_allocation(db, alloc.id, AllocState.FAILED, 1, "exit 1", 0)
            coord.store.set_job_state(db, task, JobState.RETRYING, "retrying")

    coord.kick(hosts=["h1"])  # the agent's sync tells of the ends

    placed = coord.store.get_job(third.id)
    assert placed is not None and placed.status is JobState.ASSIGNED
