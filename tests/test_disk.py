"""A full or read-only state dir (a real tmpfs) costs the host new work, never the agent or its jobs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.agent import detect, run_agent
from tests.harness import Cluster, child_pid, cluster, kill_leftover_jobs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="mounting a tmpfs needs root"
)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


async def host_warnings(c: Cluster) -> str:
    (host,) = await asyncio.to_thread(c.api.hosts)
    return "; ".join(host.inventory.warnings) if host.inventory else ""


async def wait_warning(c: Cluster, text: str, present: bool = True) -> None:
    async with asyncio.timeout(20):
        while True:
            if (text in await host_warnings(c)) == present:
                return
            await asyncio.sleep(0.1)


async def still_pending(c: Cluster, ref: str, seconds: float = 2.0) -> None:
    await asyncio.sleep(seconds)
    assert (await c.job(ref)).status == "pending"


async def test_a_full_or_read_only_state_dir_stops_new_work_not_the_agent() -> None:
    async with cluster() as c:
        with tmpfs(c.root / "state", "8m") as state_dir:
            try:
                await _scenario(c, state_dir)
            finally:
                if "h1" in c.agents:
                    await c.stop_agent("h1")  # raises if the agent died on its disk
                kill_leftover_jobs(c.root)


async def _scenario(c: Cluster, state_dir: Path) -> None:
    config = dataclasses.replace(c.agent_config("h1", "1xH100:80GB"), state_dir=state_dir)
    c.agents["h1"] = asyncio.create_task(run_agent(config, detect(config)))
    job = await c.submit("type: task\nname: long\ncommands: [sleep 300]\n")
    await c.wait_for(job.id, "running")
    (alloc_dir,) = state_dir.glob("allocs/*")
    pid = await child_pid(alloc_dir)  # "running" can come before the supervisor writes it
    fill(state_dir / "filler")
    await wait_warning(c, "state dir full: 0 bytes free")
    await asyncio.to_thread(c.api.stop, job.id)
    await c.wait_for(job.id, "stopped", "failed")
    assert not Path(f"/proc/{pid}").exists() and not c.agents["h1"].done()
    queued = await c.submit("type: task\nname: later\ncommands: [echo later]\n")
    await still_pending(c, queued.id)
    (state_dir / "filler").unlink()
    await wait_warning(c, "state dir full", present=False)
    assert (await c.wait_for(queued.id, "done", "failed")).status == "done"

    await asyncio.to_thread(remount, state_dir, "ro")
    await wait_warning(c, "state dir read-only")
    blocked = await c.submit("type: task\nname: blocked\ncommands: [echo blocked]\n")
    await still_pending(c, blocked.id)
    await asyncio.to_thread(remount, state_dir, "rw")
    assert (await c.wait_for(blocked.id, "done", "failed")).status == "done"
    assert not c.agents["h1"].done()
