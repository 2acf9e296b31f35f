"""Plain-process jobs held to their allocation in real cgroups: cores, memory without swap, pids, and
(cgroup v1) only their own GPU device nodes, tested with device nodes the test makes."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.executor import Executor
from agent.runtime.base import Observed
from agent.runtime.cgroups import Cgroups, Limits
from agent.runtime.process import ProcessRuntime
from shared.spec import TaskSpec
from shared.states import AllocState
from shared.wire import AllocationSpec, Block, GpuDevice, Inventory
from tests.harness import reachable_tmpdir

pytestmark = pytest.mark.skipif(
    (os.geteuid() != 0 or Cgroups().version != "v1") and not os.environ.get("CI"),
    reason="needs root and cgroup v1",
)

NVIDIA_MAJOR = 195
GPUS = tuple(GpuDevice(i, "nvidia", "H100", 81559, uuid=f"GPU-{i}") for i in range(2))
HOST = Inventory("h", 2, 4096, 1000, GPUS, (Block(0, (0,), (0,), 2048, 500), Block(1, (1,), (1,), 2048, 500)))


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    groups = Cgroups(parent=f"gpuctl-test-{os.getpid()}")
    yield groups
    for controller in groups.controllers:
        parent = groups.root / controller / groups.parent
        for leftover in parent.glob("*/"):
            groups.release(leftover.name)
        if parent.exists():
            parent.rmdir()


@pytest.fixture
def root() -> Iterator[Path]:
    path = reachable_tmpdir()
    yield path
    for alloc_dir in path.glob("a-*"):
        ProcessRuntime(None).signal_stop(alloc_dir, kill=True)


def run_job(
    runtime: ProcessRuntime, root: Path, name: str, script: str, memory_mib: int = 512, cpus=(0,)
) -> tuple[Observed, str]:
    alloc = AllocationSpec(
        name, "j", "job", "run", TaskSpec(commands=(script,)), (0,), (0,), cpus, memory_mib
    )
    alloc_dir = root / name
    alloc_dir.mkdir()
    env = {"HOME": str(alloc_dir / "work"), "PATH": "/usr/bin:/bin"}
    runtime.start(alloc, env, alloc_dir, alloc_dir / "output.log")
    deadline = time.monotonic() + 30
    while (seen := runtime.observe(alloc_dir)).state is AllocState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    log = (alloc_dir / "output.log").read_text()
    runtime.release(alloc_dir)
    return seen, log


def test_a_job_opens_its_own_gpu_nodes_and_no_other(cgroups: Cgroups, root: Path) -> None:
    dev = root / "dev"
    dev.mkdir()
    for name, minor in (("nvidia0", 0), ("nvidia1", 1), ("nvidiactl", 255)):
        os.mknod(dev / name, 0o666 | 0o020000, os.makedev(NVIDIA_MAJOR, minor))
    opens = (f"(: < {dev}/{n}) 2>&1 | sed 's/^/{n}: /'" for n in ("nvidia0", "nvidiactl", "nvidia1"))
    with contextlib.closing(ProcessRuntime(None, None, cgroups, HOST, dev=dev)) as runtime:
        seen, log = run_job(runtime, root, "a-dev", "; ".join(opens) + "; cat /dev/null && echo basics ok")
    lines = dict(line.split(": ", 1) for line in log.splitlines() if ": " in line)
    assert "not permitted" in lines["nvidia1"], log  # another allocation's GPU
    assert "not permitted" not in lines["nvidia0"] and "not permitted" not in lines["nvidiactl"], log
    assert "basics ok" in log and seen.state is AllocState.EXITED
    assert not (cgroups.root / "devices" / cgroups.parent / "a-dev").exists()  # released with the job


def test_a_job_is_held_to_its_cores_memory_and_pids(cgroups: Cgroups, root: Path) -> None:
    with contextlib.closing(ProcessRuntime(None, None, cgroups, HOST, pids_limit=12)) as runtime:
        _, log = run_job(runtime, root, "a-cpu", "grep Cpus_allowed_list /proc/self/status", cpus=(1,))
        assert log.split()[-1] == "1", log
        hog = "python3 -c 'b = bytearray(512 << 20); print(\"allocated\")'"
        seen, log = run_job(runtime, root, "a-mem", hog, memory_mib=64)
        assert "allocated" not in log and seen.exit_code != 0, log  # OOM-killed: no swap to spill to
        forks = "for i in $(seq 30); do sleep 3 & done; wait"
        seen, log = run_job(runtime, root, "a-pids", forks)
        assert seen.exit_code != 0 and "fork" in log.lower(), log


def test_a_cgroup_that_will_not_go_yet_keeps_the_allocation_not_the_agent(
    cgroups: Cgroups, root: Path
) -> None:
    """A cgroup the kernel will not remove (here: a child cgroup inside it, as a stuck process would) makes
    the release fail; the executor keeps the allocation and releases it on a later tick."""
    executor = Executor(root, {"process": ProcessRuntime(None, None, cgroups, HOST)}, HOST, stop_grace_s=1)
    alloc = AllocationSpec("a-busy", "j", "job", "run", TaskSpec(commands=("true",)), (0,), (0,), (0,), 512)
    deadline = time.monotonic() + 20
    while "a-busy" not in executor.allocs or not executor.allocs["a-busy"].observed.state.terminal:
        assert time.monotonic() < deadline, "the job did not end"
        executor.step([alloc], time.time())
        time.sleep(0.05)
    local = executor.allocs["a-busy"]
    executor.record_acked("a-busy", local.stream_size())  # every byte shipped: it may be forgotten
    blocker = cgroups.create("a-busy", Limits((0,), 512, 100, ()))[0] / "blocker"
    blocker.mkdir()
    try:
        executor.step([], time.time())  # the release fails after its wait; the executor goes on
        assert "a-busy" in executor.allocs
    finally:
        blocker.rmdir()
    executor.step([], time.time())
    assert "a-busy" not in executor.allocs and not local.dir.exists()
    executor.close()
