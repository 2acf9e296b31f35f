"""Job accounting: the device readings that ride each sync are folded into the running allocation whose GPU they
read (peak memory, time-weighted utilization), kept in memory and stored in batches or when the allocation
ends; `gpuctl usage` sums finished jobs per project and user, with the GPU-hours fair share weighs.

The agents here speak the protocol by hand with a real client certificate (sending readings as an agent does),
but for the last test, where a real agent runs a real job."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgspec
import pytest

from agent.agent import detect
from cli.api import Api, ApiError
from cli.config import CliConfig, save_cli_config
from cli.usage import job_lines, summary_lines
from coordinator.accounting import MAX_READING_WEIGHT_S, reading_weight_s
from coordinator.queue_policy import gpu_hours
from coordinator.usage import allocation_spans
from shared.accounting import JobUsage, UsageLine, UsageReport
from shared.spec import parse_spec
from shared.wire import AllocationSpec, SyncResponse, UserCreate
from tests.agent_session import agent_session, sync_body
from tests.harness import FAST, Cluster, cluster

ROOT = Path(__file__).resolve().parent.parent
NO_SAVE = dataclasses.replace(FAST, readings_save_s=3600.0)  # only an allocation's end stores its readings
TWO_GPUS = "commands: [train]\nresources: {gpu: H100:2}\n"


async def _sync(session: aiohttp.ClientSession, body: dict) -> SyncResponse:
    async with session.post("/agent/v1/sync", data=json.dumps(body)) as resp:
        assert resp.status == 200, await resp.text()
        return msgspec.json.decode(await resp.read(), type=SyncResponse)


def _hello(c: Cluster, name: str, simulate: str) -> dict:
    """An agent's first sync: its inventory, as it detects simulated GPUs."""
    return json.loads(sync_body(detect(c.agent_config(name, simulate))))


async def _placed(session: aiohttp.ClientSession, hello: dict, count: int) -> list[AllocationSpec]:
    """Sync until `count` allocations are placed on the host."""
    answer = await _sync(session, hello)
    async with asyncio.timeout(10):
        while len(answer.allocations) < count:
            answer = await _sync(session, {**hello, "inventory": None, "desired_index": answer.index})
    return answer.allocations


def _statuses(allocs: list[AllocationSpec], state: str) -> list[dict]:
    return [{"id": a.id, "state": state, "exit_code": 0 if state == "exited" else None} for a in allocs]


def _reading(index: int, utilization_pct: float, memory_used_mib: int) -> dict:
    return {"index": index, "utilization_pct": utilization_pct, "memory_used_mib": memory_used_mib}


def _stored_readings(c: Cluster) -> dict[str, tuple]:
    rows = c.coordinator.coordinator.store.db.execute("SELECT * FROM allocation_readings").fetchall()
    return {
        r["allocation_id"]: (r["peak_memory_mib"], r["utilization_pct_s"], r["utilization_s"]) for r in rows
    }


async def _usage(api: Api, since: str = "1h", **kwargs: object) -> UsageReport:
    return await asyncio.to_thread(api.usage, since, **kwargs)  # type: ignore[arg-type]


async def test_readings_fold_into_the_allocation_holding_the_gpu_and_usage_reports_them() -> None:
    """Each reading goes to the allocation holding its GPU; utilization is time-weighted (a reading sent
    again adds no time: the sample mean would be 40%, not 60%); a reading sent with the allocation's end
    counts; that end stores its readings at once; the GPU-hours are the spans fair share reads."""
    async with cluster(NO_SAVE) as c, agent_session(c.coordinator, "h1", c.root) as h1:
        hello = _hello(c, "h1", "4xH100:80GB")
        await _sync(h1, hello)
        first, second = await c.submit(TWO_GPUS), await c.submit(TWO_GPUS)
        allocs = await _placed(h1, hello, 2)
        hello = {**hello, "inventory": None}
        a, b = sorted(allocs, key=lambda x: x.job_id != first.id)
        await _sync(h1, {**hello, "allocations": _statuses(allocs, "running")})
        readings = [_reading(a.gpus[0], 80, 1000), _reading(a.gpus[1], 40, 30000)]
        readings += [_reading(b.gpus[0], 10, 500), _reading(b.gpus[1], 10, 700)]
        await _sync(h1, {**hello, "allocations": _statuses(allocs, "running"), "readings": readings})
        again = {"readings": [_reading(a.gpus[0], 0, 2000)], "readings_age_s": 600}  # taken before the last
        await _sync(h1, {**hello, "allocations": _statuses(allocs, "running"), **again})
        assert _stored_readings(c) == {}  # in memory: not a write per sync
        last = [_reading(b.gpus[0], 10, 800)]  # read before it ended, sent with its end: it counts
        await _sync(h1, {**hello, "allocations": _statuses(allocs, "exited"), "readings": last})
        stored = _stored_readings(c)
        assert (stored[a.id][0], stored[b.id][0]) == (30000, 800)  # stored by their end, no save yet

        report = await _usage(c.api, jobs=True)
        by_id = {j.id: j for j in report.jobs}
        assert (by_id[first.id].peak_memory_mib, by_id[second.id].peak_memory_mib) == (30000, 800)
        assert by_id[first.id].utilization_pct == pytest.approx(60.0)
        assert by_id[second.id].utilization_pct == pytest.approx(10.0)
        store = c.coordinator.coordinator.store
        spans = allocation_spans(store.db, "a.job_id = ?", (first.id,))
        expected = sum(gpu_hours(s["gpus"], s["started_at"], s["finished_at"]) for s in spans)
        assert by_id[first.id].gpu_hours == pytest.approx(expected) and expected > 0
        assert (by_id[first.id].gpus, by_id[first.id].attempts, by_id[first.id].user) == (2, 1, "admin")
        (line,) = report.lines
        assert (line.project, line.user, line.jobs) == ("default", "admin", 2)
        assert line.peak_memory_mib == 30000
        assert line.gpu_hours == pytest.approx(sum(j.gpu_hours for j in report.jobs))


async def test_a_reading_of_a_device_not_in_the_inventory_is_ignored() -> None:
    """The host now reports one GPU; a reading of the other (still held by the running allocation) is not
    the host's to give."""
    async with cluster(NO_SAVE) as c, agent_session(c.coordinator, "h1", c.root) as h1:
        hello = _hello(c, "h1", "2xH100:80GB")
        await _sync(h1, hello)
        await c.submit(TWO_GPUS)
        (alloc,) = await _placed(h1, hello, 1)
        running = {**hello, "inventory": None, "allocations": _statuses([alloc], "running")}
        await _sync(h1, running)
        shrunk = json.loads(sync_body(detect(c.agent_config("h1", "1xH100:80GB"))))
        readings = [_reading(0, 50, 100), _reading(1, 50, 70000)]
        await _sync(h1, {**shrunk, "allocations": running["allocations"], "readings": readings})
        await _sync(h1, {**shrunk, "inventory": None, "allocations": _statuses([alloc], "exited")})
        assert _stored_readings(c)[alloc.id][0] == 100


async def test_readings_are_kept_in_memory_and_stored_in_one_batch() -> None:
    async with cluster(NO_SAVE) as c, agent_session(c.coordinator, "h1", c.root) as h1:
        hello = _hello(c, "h1", "1xH100:80GB")
        await _sync(h1, hello)
        job = await c.submit("commands: [train]\nresources: {gpu: 1}\n")
        (alloc,) = await _placed(h1, hello, 1)
        running = {**hello, "inventory": None, "allocations": _statuses([alloc], "running")}
        await _sync(h1, running)
        for memory_mib in (300, 900, 600):
            await _sync(h1, {**running, "readings": [_reading(0, 70, memory_mib)]})
        assert _stored_readings(c) == {}
        await c.coordinator.coordinator.accounting.save()  # what the housekeeping beat does
        peak, pct_s, seconds = _stored_readings(c)[alloc.id]
        assert peak == 900 and pct_s == pytest.approx(70 * seconds) and seconds > 0
        await c.coordinator.coordinator.accounting.save()  # nothing new: nothing added
        assert _stored_readings(c)[alloc.id] == (peak, pct_s, seconds)
        await _sync(h1, {**running, "allocations": _statuses([alloc], "exited")})
        (listed,) = (await _usage(c.api, jobs=True)).jobs
        assert (listed.id, listed.peak_memory_mib) == (job.id, 900)
        assert listed.utilization_pct == pytest.approx(70.0)


async def test_the_housekeeping_beat_saves_the_readings_of_running_jobs() -> None:
    settings = dataclasses.replace(FAST, readings_save_s=0.1)
    async with cluster(settings) as c, agent_session(c.coordinator, "h1", c.root) as h1:
        hello = _hello(c, "h1", "1xH100:80GB")
        await _sync(h1, hello)
        await c.submit("commands: [train]\nresources: {gpu: 1}\n")
        (alloc,) = await _placed(h1, hello, 1)
        running = {**hello, "inventory": None, "allocations": _statuses([alloc], "running")}
        await _sync(h1, running)
        await _sync(h1, {**running, "readings": [_reading(0, 70, 4242)]})
        async with asyncio.timeout(30):  # the next beat (every 5 s here) stores them
            while True:
                stored = _stored_readings(c).get(alloc.id)
                if stored is not None:
                    break
                await asyncio.sleep(0.1)
        assert stored[0] == 4242


async def test_a_coordinator_stopped_cleanly_keeps_the_readings_it_held() -> None:
    """What a restart may lose is the readings since the last save; a clean stop saves them first."""
    async with cluster(NO_SAVE) as c:
        async with agent_session(c.coordinator, "h1", c.root) as h1:
            hello = _hello(c, "h1", "1xH100:80GB")
            await _sync(h1, hello)
            job = await c.submit("commands: [train]\nresources: {gpu: 1}\n")
            (alloc,) = await _placed(h1, hello, 1)
            running = {**hello, "inventory": None, "allocations": _statuses([alloc], "running")}
            await _sync(h1, running)
            await _sync(h1, {**running, "readings": [_reading(0, 70, 4242)]})
        await c.restart_coordinator(NO_SAVE)
        async with agent_session(c.coordinator, "h1", c.root) as h1:
            await _sync(h1, {**running, "allocations": _statuses([alloc], "exited")})
        await c.wait_for(job.id, "done")
        (listed,) = (await _usage(c.api, jobs=True)).jobs
        assert (listed.peak_memory_mib, listed.utilization_pct) == (4242, pytest.approx(70.0))


def test_a_reading_weighs_the_seconds_since_the_one_before_at_most_a_minute() -> None:
    assert reading_weight_s(110.0, 100.0, 50.0) == 10.0
    assert reading_weight_s(110.0, None, 105.0) == 5.0  # the first: since the allocation started
    assert reading_weight_s(1000.0, 100.0, 50.0) == MAX_READING_WEIGHT_S  # a gap is not filled by one
    assert reading_weight_s(90.0, 100.0, 50.0) == 0.0  # older than the last: sent again


async def test_members_see_their_projects_usage_and_jobs_record_who_submitted_them() -> None:
    async with cluster() as c:
        apis = {}
        for project in ("alpha", "beta"):
            await asyncio.to_thread(c.api.create_project, project)
            user = UserCreate(name=f"{project}-dev", project=project)
            created = await asyncio.to_thread(c.api.create_user, user)
            apis[project] = Api(CliConfig(c.coordinator.url, created.token, c.coordinator.pki.ca_cert))
        alpha, beta = apis["alpha"], apis["beta"]
        spec = parse_spec("commands: [train]\nresources: {gpu: 1}\n")  # no host: waits, then is stopped
        job = await asyncio.to_thread(alpha.submit, spec)
        array = await asyncio.to_thread(alpha.submit_array, spec, "0-1")
        scheduled = parse_spec("commands: [train]\nresources: {gpu: 1}\nschedule: {cron: '0 3 * * *'}\n")
        await asyncio.to_thread(alpha.submit, scheduled)
        (run,) = c.coordinator.coordinator.fire_schedules(now=4e9)
        for ref in (job.id, array.id, run):
            await asyncio.to_thread(alpha.stop, ref)

        (line,) = (await _usage(alpha)).lines
        assert (line.project, line.user, line.jobs, line.gpu_hours) == ("alpha", "alpha-dev", 4, 0.0)
        assert {j.user for j in (await _usage(alpha, jobs=True)).jobs} == {"alpha-dev"}
        assert (await _usage(beta)).lines == []
        with pytest.raises(ApiError, match=r"^project: a member sees its own project's usage \('beta'\)"):
            await _usage(beta, project="alpha")
        assert [x.user for x in (await _usage(c.api)).lines] == ["alpha-dev"]  # the admin sees all
        assert (await _usage(c.api, user="beta-dev")).lines == []
        with pytest.raises(ApiError, match=r"^since: expected a duration like 30s or 10m, got '7x'$"):
            await _usage(c.api, since="7x")


async def test_gpuctl_usage_prints_a_table_json_and_a_one_line_error() -> None:
    async with cluster() as c:
        job = await asyncio.to_thread(c.api.submit, parse_spec("commands: [train]\nresources: {gpu: 1}\n"))
        await asyncio.to_thread(c.api.stop, job.id)
        config = save_cli_config(
            CliConfig(c.coordinator.url, c.api.config.token, c.coordinator.pki.ca_cert), c.root / "cli.yaml"
        )
        env = dict(os.environ, GPUCTL_CONFIG=str(config))

        def gpuctl(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-c", "from cli.main import main; main()", "usage", *args]
            return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

        table = await asyncio.to_thread(gpuctl)
        assert table.stdout.splitlines()[1].split() == ["default", "admin", "1", "0.00", "-", "-"]
        listed = await asyncio.to_thread(gpuctl, "--jobs", "--since", "1h")
        assert listed.stdout.splitlines()[1].split()[:5] == [job.id, job.name, "default", "admin", "stopped"]
        as_json = msgspec.json.decode((await asyncio.to_thread(gpuctl, "--json")).stdout, type=UsageReport)
        assert [x.jobs for x in as_json.lines] == [1]
        bad = await asyncio.to_thread(gpuctl, "--since", "yesterday")
        assert bad.returncode != 0
        assert bad.stderr.strip().splitlines() == [
            "Error: since: expected a duration like 30s or 10m, got 'yesterday'"
        ]
        # a project's name mistyped is said, not answered as a project where nothing finished
        typo = await asyncio.to_thread(gpuctl, "--project", "defualt")
        assert typo.returncode != 0
        assert typo.stderr.strip().splitlines() == ["Error: project: no project 'defualt'"]


def test_the_tables_fit_80_columns() -> None:
    long = "x" * 63
    line = UsageLine(
        project=long,
        user=long,
        jobs=123456,
        gpu_hours=99999.4,
        utilization_pct=99.6,
        peak_memory_mib=1024 * 1024 * 3 // 2,
    )
    job = JobUsage(
        id="0123abcd",
        name=long,
        project=long,
        user=long,
        state="stopped",
        submitted_at=0.0,
        started_at=0.0,
        finished_at=86400.0 * 3 + 7200,
        elapsed_s=86400.0 * 3 + 7200,
        gpus=1024,
        attempts=3,
        gpu_hours=999.99,
        utilization_pct=None,
        peak_memory_mib=68562,  # a reading's peak, not a whole number of GB
    )
    report = UsageReport(
        since=0.0,
        until=1.0,
        lines=[line, line],
        total=msgspec.structs.replace(line, project="TOTAL", user=""),
        jobs=[job],
    )
    printed = summary_lines(report) + job_lines(report)
    assert all(len(text) <= 80 for text in printed), printed
    assert "~" not in printed[0] + printed[4]  # the headers whole
    assert printed[3].split()[:2] == ["TOTAL", "123456"]  # the total has no user
    assert printed[1].split() == ["xxxxxxxxxxxxxxx~", "xxxxxxxxxxxxxxx~", "123456", "99999", "100%", "1.5TB"]
    assert printed[-1].split()[5:] == ["3d2h", "1024", "999.99", "-", "67.0GB"]


async def test_a_real_agents_finished_job_has_its_gpu_hours() -> None:
    async with cluster() as c:
        c.start_agent("h1", "2xH100:80GB")
        job = await c.submit("commands: ['sleep 0.3']\nresources: {gpu: 2}\n")
        await c.wait_for(job.id, "done")
        (listed,) = (await _usage(c.api, jobs=True)).jobs
        (alloc,) = c.coordinator.coordinator.store.allocations_of(job.id)
        assert alloc.started_at is not None and alloc.finished_at is not None
        expected = 2 * (alloc.finished_at - alloc.started_at) / 3600
        assert listed.gpu_hours == pytest.approx(expected) and expected > 0
        assert (listed.state, listed.gpus, listed.attempts, listed.user) == ("done", 2, 1, "admin")
        assert listed.utilization_pct is None  # no reading was taken while it ran (every 10 s)
