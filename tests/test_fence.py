"""Self-fencing (`stop_after_coordinator_lost`, agent/fence.py): an agent that has had no successful sync for
that long stops its jobs, each with its grace period, keeps trying, and reports them stopped once the
coordinator answers again. Off by default: a cut-off agent's jobs run on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.fence import fence_reason
from agent.reconcile import Local, Stop, reconcile
from shared.states import AllocState
from tests.fault_cluster import Counts, FaultCluster, until
from tests.test_reconcile import desired


@pytest.fixture
def faults() -> Iterator[FaultCluster]:
    cluster = FaultCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def test_the_setting_is_a_duration_and_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("coordinator: https://c:8443\n")
    assert load_config(path, {}).stop_after_coordinator_lost_s is None
    path.write_text("coordinator: https://c:8443\nstop_after_coordinator_lost: 10m\n")
    assert load_config(path, {}).stop_after_coordinator_lost_s == 600.0
    for bad in ("soon", "0s"):
        path.write_text(f"coordinator: https://c:8443\nstop_after_coordinator_lost: {bad}\n")
        with pytest.raises(ConfigError, match="^stop_after_coordinator_lost: "):
            load_config(path, {})


def test_a_fence_stops_what_runs_and_starts_nothing() -> None:
    assert fence_reason(100.0, 0.0, None) == ""
    assert fence_reason(100.0, 50.0, 60.0) == ""
    fence = fence_reason(100.0, 40.0, 60.0)
    assert fence == "no successful sync with the coordinator for 1m (stop_after_coordinator_lost)"
    actual = {
        "a1": Local("a1", AllocState.RUNNING),
        "a2": Local("a2", AllocState.RUNNING, stop_requested=True),
        "a3": Local("a3", AllocState.EXITED, logs_shipped=True),
    }
    wanted = [desired("a1"), desired("a2"), desired("a4")]  # the last answer wanted a4 started
    assert reconcile(wanted, actual, fence) == [Stop("a1", fence)]


def _alloc_dir(c: FaultCluster, agent: str) -> Path:
    (path,) = (c.root / agent / "allocs").iterdir()
    return path


@pytest.mark.timeout(240)
def test_an_agent_without_its_coordinator_stops_its_jobs_after_the_set_time(faults: FaultCluster) -> None:
    c, lines = faults, 300  # 15 s and more: both jobs still run at twice the setting, well past the fence
    c.start_coordinator()
    c.add_agent("ff1", "1xH100:80GB", stop_after_coordinator_lost="4s")
    fenced = c.submit("fenced", lines)
    until(lambda: c.api.job(fenced).status == "running", 60, "the fenced agent's job")
    c.add_agent("ff2", "1xH100:80GB")  # the setting is off
    unfenced = c.submit("unfenced", lines)
    until(lambda: c.api.job(unfenced).status == "running", 60, "the other agent's job")
    c.kill_coordinator()
    killed_at = time.monotonic()
    said = "(stop_after_coordinator_lost): stopping every job (1 running)"
    until(lambda: said in c.agent_log("ff1"), 30, "the agent to fence itself")
    fenced_after_s = time.monotonic() - killed_at
    until(lambda: (_alloc_dir(c, "ff1") / "exit.json").exists(), 5, "its job to stop (SIGTERM)")
    until(lambda: time.monotonic() - killed_at > 8, 10, "twice the setting")
    assert not (_alloc_dir(c, "ff2") / "exit.json").exists(), "an agent without the setting stopped its job"
    assert "sync failed: " in c.agent_log("ff1").split(said, 1)[1], "the fenced agent stopped syncing"
    c.start_coordinator()
    until(lambda: c.api.job(fenced).status == "stopped", 60, "the fenced job reported stopped")
    assert "stop_after_coordinator_lost" in c.api.job(fenced).reason
    assert "no longer fenced" in c.agent_log("ff1")
    c.wait_ended([unfenced], 120)
    counts = c.tally({unfenced: "unfenced"}, lines)
    print(f"fenced after {fenced_after_s:.1f} s (setting 4s); the unfenced agent's job: {counts.line()}")
    assert 0 < fenced_after_s < 8
    assert c.api.job(unfenced).status == "done"
    assert counts == Counts(), counts.line()
