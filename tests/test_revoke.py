"""A host removed from the coordinator stops its jobs (with their grace period) before its agent exits:
the coordinator already counts their GPUs as free."""

from __future__ import annotations

import asyncio
import os

import pytest

from agent.sync import Revoked
from tests.harness import child_pid, cluster


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


async def test_a_removed_host_stops_its_jobs_then_exits() -> None:
    async with cluster() as c:
        config = c.start_agent("h1", simulate="1xH100:80GB")
        job = await c.submit("type: task\nname: long\ncommands: [\"trap '' TERM; sleep 300\"]\n")
        await c.wait_for(job.id, "running")
        (alloc_dir,) = config.state_dir.glob("allocs/*")
        pid = await child_pid(alloc_dir)
        await asyncio.to_thread(c.api.remove_host, "h1", True)  # --force: its job runs
        task = c.agents.pop("h1")
        async with asyncio.timeout(30):
            with pytest.raises(ExceptionGroup) as caught:
                await task
        assert caught.group_contains(Revoked)
        assert not _alive(pid), "the job outlived its removed host"
        assert os.path.exists(alloc_dir / "exit.json")  # its supervisor saw it end
