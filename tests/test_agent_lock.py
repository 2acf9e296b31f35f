"""One agent per state dir: a second one, started through the real entry point, refuses with the first one's
pid and leaves its work alone; the lock goes with the process that held it, however it ended."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.lock import LOCK_FILE, StateDirBusy, hold_state_dir
from tests.harness import Cluster, cluster

REPO = Path(__file__).resolve().parents[1]
AGENT = [sys.executable, "-c", "from agent.main import main; main()"]


async def wait_for_host(c: Cluster, name: str) -> None:
    """Until the agent has synced (and so holds its state dir)."""
    async with asyncio.timeout(30):
        while True:
            if any(h.name == name and h.inventory for h in await asyncio.to_thread(c.api.hosts)):
                return
            await asyncio.sleep(0.1)


async def test_a_second_agent_on_the_same_state_dir_refuses_naming_the_first() -> None:
    async with cluster() as c:
        config = c.start_agent("first", "2xH100:80GB")
        await wait_for_host(c, "first")
        second = await asyncio.to_thread(
            subprocess.run,
            [*AGENT, "run", "--config", str(c.root / "none.yaml"), "--state-dir", str(config.state_dir)]
            + ["--coordinator", c.coordinator.url, "--name", "second", "--simulate", "2xH100:80GB"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert second.returncode == 1, second.stderr
        expected = f"another gpuctl-agent (pid {os.getpid()}) is using {config.state_dir}; stop it first"
        assert second.stderr.splitlines()[-1] == f"Error: {expected}"  # after its INFO lines
        # The first agent still runs its work.
        job = await c.submit("commands: [echo still here]")
        assert await c.full_log(job.id) == b"still here\n"


def test_the_lock_is_refused_in_process_too_and_free_once_released(tmp_path: Path) -> None:
    with hold_state_dir(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        busy = rf"^another gpuctl-agent \(pid {os.getpid()}\) is using"
        with pytest.raises(StateDirBusy, match=busy), hold_state_dir(tmp_path):
            pass
    with hold_state_dir(tmp_path):  # released on exit: a stale file with a pid blocks nobody
        pass


HOLD = """
import pathlib, time
from agent.lock import hold_state_dir
with hold_state_dir(pathlib.Path({path!r})):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_killed_holder_leaves_the_lock_free(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(path=str(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StateDirBusy, match=rf"\(pid {holder.pid}\)"), hold_state_dir(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with hold_state_dir(tmp_path):
        pass
