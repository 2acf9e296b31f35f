"""A forgotten allocation's folder leaves the journal at once and the disk off the event loop, also when an
earlier agent stopped before deleting it. A real job, run as the agent's user."""

from __future__ import annotations

import time
from pathlib import Path

from agent.executor import Executor
from agent.runtime.process import ProcessRuntime
from shared.spec import TaskSpec
from shared.wire import AllocationSpec, Block, Inventory

HOST = Inventory("h", 1, 4096, 1000, (), (Block(0, (), (0,), 2048, 500),))


def test_a_forgotten_allocation_leaves_the_journal_at_once_and_the_disk_soon(tmp_path: Path) -> None:
    (tmp_path / "trash" / "a-old" / "work").mkdir(parents=True)  # an earlier agent had not deleted it yet
    executor = Executor(tmp_path, {"process": ProcessRuntime(None)}, HOST, stop_grace_s=1)
    executor.adopt()
    alloc = AllocationSpec("a-1", "j", "job", "run", TaskSpec(commands=("echo hi",)), (0,), (), (), 512)
    deadline = time.monotonic() + 30
    while "a-1" not in executor.allocs or not executor.allocs["a-1"].observed.state.terminal:
        assert time.monotonic() < deadline, "the job did not end"
        executor.step([alloc], time.time())
        time.sleep(0.05)
    executor.record_acked("a-1", executor.allocs["a-1"].stream_size())  # shipped: it may be forgotten
    executor.step([], time.time())
    assert "a-1" not in executor.allocs and not (tmp_path / "allocs" / "a-1").exists()
    executor.close()  # waits for the cleaner
    assert list((tmp_path / "trash").iterdir()) == []
