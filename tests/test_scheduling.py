"""Scheduling in the coordinator (coordinator/scheduling.py): changes alone keep the queue moving, and the
housekeeping beat's re-sync finds nothing they missed."""

from __future__ import annotations

import pytest

from tests.harness import cluster

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
