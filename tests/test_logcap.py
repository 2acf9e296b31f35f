"""The per-allocation log cap: the agent ships head, marker and tail; the coordinator stores nothing past it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent import logcap
from coordinator.logstore import Logs
from tests.harness import FAST, cluster

CAP = 4096


def spool(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "output.log"
    path.write_bytes(bytes(b"abcdefghijklmnopqrstuvwxyz\n"[i % 27] for i in range(size)))
    return path


def whole_stream(path: Path, cap: int, ended: bool, chunk: int = 1000) -> bytes:
    size = path.stat().st_size
    out = b""
    while len(out) < logcap.stream_size(size, cap, ended):
        out += logcap.read_stream(path, len(out), chunk, size, cap, ended)
    return out


def test_a_log_under_the_cap_ships_whole(tmp_path: Path) -> None:
    path = spool(tmp_path, CAP - 1)
    assert whole_stream(path, CAP, ended=True) == path.read_bytes()
    assert whole_stream(path, 0, ended=False) == path.read_bytes()  # no cap: everything, live


def test_while_the_job_runs_only_the_head_ships(tmp_path: Path) -> None:
    path = spool(tmp_path, 10 * CAP)
    assert whole_stream(path, CAP, ended=False) == path.read_bytes()[: CAP // 2]


def test_an_ended_log_over_the_cap_keeps_head_and_tail_around_a_marker(tmp_path: Path) -> None:
    path = spool(tmp_path, 10 * CAP + 5)
    data = path.read_bytes()
    for chunk in (1, 7, 1000, 10 * CAP):  # any chunking gives the same bytes: shipping by offset is safe
        stream = whole_stream(path, CAP, ended=True, chunk=chunk)
        assert len(stream) <= CAP
        head, tail = CAP // 2, logcap.tail_bytes(CAP)
        assert stream.startswith(data[:head]) and stream.endswith(data[-tail:])
        cut = len(data) - head - tail
        assert (
            stream[head:-tail]
            == f"\n[gpuctl: {cut} bytes cut here: the job's log is over its 4096 B cap]\n".encode()
        )


def test_the_coordinator_stores_nothing_past_the_cap(log_store: Logs) -> None:
    assert log_store.append("a-1", 0, b"x" * 3000, cap=CAP) == 3000
    assert log_store.append("a-1", 3000, b"y" * 3000, cap=CAP) == CAP  # cut at the cap
    assert log_store.append("a-1", CAP, b"z" * 100, cap=CAP) == CAP + 100  # acknowledged, dropped
    assert log_store.append("a-1", 0, b"x" * 3000, cap=CAP) == CAP  # idempotent by offset
    assert log_store.size("a-1") == CAP
    assert log_store.read("a-1", 0, 10 * CAP) == b"x" * 3000 + b"y" * (CAP - 3000)


async def test_a_job_that_writes_past_the_cap_keeps_its_first_and_last_lines() -> None:
    async with cluster(dataclasses.replace(FAST, log_cap_bytes=CAP)) as c:
        c.start_agent("cap-a")
        job = await c.submit("commands: ['for n in $(seq 1 5000); do echo line $n; done']")
        log = await c.full_log(job.id)
        assert (await c.job(job.id)).status == "done"
        assert len(log) <= CAP
        lines = log.decode().splitlines()
        assert lines[:3] == ["line 1", "line 2", "line 3"] and lines[-1] == "line 5000"
        markers = [line for line in lines if line.startswith("[gpuctl: ")]
        assert len(markers) == 1 and markers[0].endswith(
            "bytes cut here: the job's log is over its 4096 B cap]"
        )
        stored = c.coordinator.coordinator.logs
        assert stored.size(job.allocation_id or (await c.job(job.id)).allocation_id or "") == len(log)
