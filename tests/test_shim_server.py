"""The supervisors' fork server: a job's supervisor is forked from it, outlives it, and a server that died
is replaced at the next start. Real processes, as the agent's user."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from agent.runtime.base import Observed
from agent.runtime.process import ProcessRuntime
from shared.spec import TaskSpec
from shared.states import AllocState
from shared.wire import AllocationSpec


def start(runtime: ProcessRuntime, root: Path, name: str, script: str) -> Path:
    alloc = AllocationSpec(name, "j", "job", "run", TaskSpec(commands=(script,)), (0,), (0,), (), 512)
    alloc_dir = root / name
    alloc_dir.mkdir()
    runtime.start(alloc, {"PATH": "/usr/bin:/bin"}, alloc_dir, alloc_dir / "output.log")
    return alloc_dir


def ended(runtime: ProcessRuntime, alloc_dir: Path) -> Observed:
    deadline = time.monotonic() + 30
    while (seen := runtime.observe(alloc_dir)).state is AllocState.RUNNING:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    return seen


def test_a_supervisor_outlives_its_fork_server_which_the_next_start_replaces(tmp_path: Path) -> None:
    with contextlib.closing(ProcessRuntime(None)) as runtime:
        first = start(runtime, tmp_path, "a-1", "sleep 30")
        server = runtime.shims._proc
        assert server is not None
        server.kill()
        server.wait()
        try:
            assert runtime.observe(first).state is AllocState.RUNNING  # detached: not the server's child
            second = start(runtime, tmp_path, "a-2", "echo from the second job")
            assert ended(runtime, second).exit_code == 0
            assert (second / "output.log").read_text() == "from the second job\n"
        finally:
            runtime.signal_stop(first, kill=True)
        assert ended(runtime, first).exit_code == 128 + 9


def test_a_supervisor_that_cannot_start_fails_the_fork_and_says_why_in_the_log(tmp_path: Path) -> None:
    with contextlib.closing(ProcessRuntime(None)) as runtime:
        argv = [str(tmp_path / "exit.json"), "", "--", "true"]  # no start.json beside it
        assert runtime.shims.start(argv, tmp_path, tmp_path / "output.log") != 0
        assert "start.json" in (tmp_path / "output.log").read_text()
        assert not (tmp_path / "shim.pid").exists()


def test_starts_sent_together_are_answered_in_order(tmp_path: Path) -> None:
    """The agent sends a step's starts, then reads their answers: each comes, in the order asked."""
    with contextlib.closing(ProcessRuntime(None)) as runtime:
        folders = []
        for name in ("a-1", "a-2", "a-3"):
            folder = tmp_path / name
            folder.mkdir()
            if name != "a-2":  # its supervisor cannot start: no start.json
                (folder / "start.json").write_text('{"env": {}, "cpus": [], "cgroups": []}')
            folders.append(folder)
            runtime.shims.send([str(folder / "exit.json"), "", "--", "true"], folder, folder / "output.log")
        assert [runtime.shims.answer() for _ in folders] == [0, 1, 0]
        assert [(f / "shim.pid").exists() for f in folders] == [True, False, True]


async def test_jobs_started_in_one_step_run_each(tmp_path: Path) -> None:
    """On the event loop, a start does not wait for its fork: observing the job reads its answer."""
    with contextlib.closing(ProcessRuntime(None)) as runtime:
        folders = [start(runtime, tmp_path, f"a-{n}", f"echo job {n}") for n in range(4)]
        for n, folder in enumerate(folders):
            assert ended(runtime, folder).exit_code == 0
            assert (folder / "output.log").read_text() == f"job {n}\n"


async def test_a_jobs_end_calls_on_exit_on_the_event_loop(tmp_path: Path) -> None:
    """The executor hears of an end at once, not at its next tick: the supervisor is watched by a pidfd."""
    ended = asyncio.Event()
    with contextlib.closing(ProcessRuntime(None, on_exit=ended.set)) as runtime:
        alloc_dir = start(runtime, tmp_path, "a-1", "sleep 0.5")
        assert not ended.is_set()
        async with asyncio.timeout(30):
            await ended.wait()
        assert runtime.observe(alloc_dir).state is AllocState.EXITED  # its exit.json came first
