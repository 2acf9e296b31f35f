"""Device readings ride the sync: a real agent reads its (simulated, or fake-NVML) GPUs every
`metrics_interval` and sends the latest with its next sync, once; the coordinator keeps them per GPU of the
host's inventory and serves a job's (`GET /jobs/{ref}/metrics`, `gpuctl metrics`) and the fleet's (`top`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from agent.agent import detect, run_agent
from agent.readings import sound, take_readings
from agent.state import SharedState
from cli.api import Api, ApiError
from coordinator.readings import DeviceReadings
from coordinator.readings_metrics import device_text
from coordinator.sample_ring import SampleRing
from coordinator.store import HostRow
from shared.spec import parse_spec
from shared.wire import GpuMetrics, HostReadings, JobMetricsView, SyncRequest
from tests.agent_session import agent_session, sync_body
from tests.fakes import fake_nvml, load
from tests.harness import FAST, Cluster, cluster
from tests.test_arrays import cli
from tests.test_fuzz import NO_WAIT
from tests.test_inventory_guard import SOUND
from tests.test_metrics import member_of, samples, scraped

READ_OFTEN = replace(FAST, metrics_interval_s=0.2)
TRAIN = "name: train\nresources: {gpu: 2}\ncommands: ['sleep 300']"


async def job_readings(api: Api, job_id: str, ready: Callable[[JobMetricsView], bool]) -> JobMetricsView:
    """The job's readings once `ready` holds of them."""
    async with asyncio.timeout(60):
        while True:
            view = await asyncio.to_thread(api.job_metrics, job_id)
            if ready(view):
                return view
            await asyncio.sleep(0.1)


def busy(view: JobMetricsView) -> bool:
    """Every GPU of the job has a reading that shows it working."""
    return bool(view.gpus) and all(
        s.samples and (s.samples[-1].reading.utilization_pct or 0) > 0 for s in view.gpus
    )


async def test_a_running_jobs_readings_reach_its_metrics_and_gpuctl_metrics(tmp_path: Path) -> None:
    async with cluster(READ_OFTEN) as c:
        c.start_agent("host-a", "4xH100:80GB")
        vision = await member_of(c, "vision")
        job = await asyncio.to_thread(vision.submit, parse_spec(TRAIN))
        running = await c.wait_for(job.id, "running")

        view = await job_readings(vision, job.id, busy)

        assert (view.job_id, view.name, view.status) == (job.id, "train", "running")
        assert [(s.host, s.node, s.gpu) for s in view.gpus] == [("host-a", 0, gpu) for gpu in running.gpus]
        for series in view.gpus:
            reading = series.samples[-1].reading
            assert series.uuid == reading.uuid == f"GPU-sim-00000000-0000-0000-0000-{series.gpu:012x}"
            assert reading.index == series.gpu
            assert 0 < (reading.memory_used_mib or 0) < (reading.memory_total_mib or 0) == 80 * 1024
            assert (reading.sm_clock_mhz or 0) > 1000 and (reading.power_w or 0) > 100
            assert [s.at for s in series.samples] == sorted(s.at for s in series.samples)
        code, out = await asyncio.to_thread(cli, vision, tmp_path, "metrics", job.id, "--once")
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0].startswith(f"job {job.id} (train) running: 2 GPUs; read"), out
        assert lines[1].split() == ["HOST", "GPU", "UTIL", "MEM", "GiB", "TEMP", "POWER", "SM", "MHz", "ECC"]
        rows = [line.split() for line in lines[2:]]
        assert [(row[0], int(row[1])) for row in rows] == [("host-a", gpu) for gpu in running.gpus], out
        for row in rows:
            assert (
                row[2].endswith("%")
                and int(row[2][:-1]) > 0
                and row[3].endswith("/80.0")
                and row[-1] == "0/0"
            )
        assert max(map(len, lines)) <= 80
        code, out = await asyncio.to_thread(cli, vision, tmp_path, "metrics", job.id, "--json")
        assert code == 0, out
        assert [s.gpu for s in msgspec.json.decode(out, type=JobMetricsView).gpus] == list(running.gpus)

        other = await member_of(c, "other")  # another project's member sees no such job
        with pytest.raises(ApiError, match="no job"):
            await asyncio.to_thread(other.job_metrics, job.id)
        await asyncio.to_thread(vision.stop, job.id)
        await c.wait_for(job.id, "stopped")
        assert (await asyncio.to_thread(vision.job_metrics, job.id)).gpus == []


async def test_top_shows_each_host_on_one_line(tmp_path: Path) -> None:
    async with cluster(READ_OFTEN) as c:
        c.start_agent("host-a", "4xH100:80GB")
        c.start_agent("host-b", "2xA100:40GB")
        # on host-a's H100s: two GPUs alone would fit host-b's two A100s better, once that host has joined
        job = await c.submit(TRAIN.replace("gpu: 2", "gpu: H100:2"))
        await c.wait_for(job.id, "running")
        await fleet_readings(c, lambda found: {s.host for s in found} == {"host-a", "host-b"})

        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "top", "--once")

        assert code == 0, out
        header, *rows = out.splitlines()
        assert header.split() == ["HOST", "GPUS", "BUSY", "UTIL", "MEM", "GiB", "TEMP", "POWER", "UNHEALTHY"]
        cells = {row.split()[0]: row.split() for row in rows}
        assert cells["host-a"][1:3] == ["4", "2/4"] and cells["host-a"][4].endswith("/320"), out
        assert cells["host-b"][1:4] == ["2", "0/2", "0%"] and cells["host-b"][4] == "0/80", out
        assert max(map(len, out.splitlines())) <= 80


async def test_top_shows_a_host_name_as_text_not_markup(tmp_path: Path) -> None:
    """A host's name is the agent's word: rich markup in it is shown as it is, never read as markup (a
    `[/...]` that closes nothing made `gpuctl top` crash for every user)."""
    async with cluster(READ_OFTEN) as c:
        c.start_agent("[bold]gpu-a", "2xA100:40GB")
        await fleet_readings(c, lambda found: [s.host for s in found] == ["[bold]gpu-a"])

        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "top", "--once")

        assert code == 0, out
        assert out.splitlines()[1].split()[:2] == ["[bold]gpu-a", "2"], out


async def fleet_readings(c: Cluster, ready: Callable[[list[HostReadings]], bool]) -> list[HostReadings]:
    async with asyncio.timeout(60):
        while True:
            found = await asyncio.to_thread(c.api.fleet_readings)
            if ready(found):
                return found
            await asyncio.sleep(0.1)


async def test_readings_of_gpus_the_inventory_lacks_are_dropped_and_xids_ride_along() -> None:
    async with cluster(READ_OFTEN) as c:
        nvml = fake_nvml(load("nvml", "h100_sxm_8"))  # eight devices read, two declared
        config = c.agent_config("h1", "2xH100:80GB", 2)
        c.agents["h1"] = asyncio.create_task(
            run_agent(config, detect(config), nvml=nvml, health_interval_s=0.05)
        )
        nvml.xids.append(
            (1, 13)
        )  # a graphics engine exception: the job's fault, no health mark; in the reading
        token = (c.root / "coordinator" / "metrics.token").read_text().strip()

        def xid_13(found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> bool:
            return 13 in [v for (name, _), v in found.items() if name == "gpuctl_gpu_xid_errors"]

        found = await scraped(c, token, xid_13)

        def by_gpu(family: str) -> dict[tuple[str, str], float]:
            return {(dict(k)["gpu"], dict(k)["uuid"]): v for (name, k), v in found.items() if name == family}

        uuids = [f"GPU-sim-00000000-0000-0000-0000-{i:012x}" for i in range(2)]  # the inventory's names
        assert by_gpu("gpuctl_gpu_xid_errors") == {("0", uuids[0]): 0, ("1", uuids[1]): 13}  # the last XID
        assert by_gpu("gpuctl_gpu_utilization_percent") == {
            ("0", uuids[0]): 0,
            ("1", uuids[1]): 97,
        }  # fake NVML's
        (host,) = await asyncio.to_thread(c.api.fleet_readings)
        assert (host.host, host.gpus, host.utilization_pct) == ("h1", 2, 48.5)


async def test_out_of_bounds_readings_are_refused_naming_the_field_and_strays_are_dropped() -> None:
    async with cluster(NO_WAIT) as c, agent_session(c.coordinator, "h1", c.root) as agent:
        body = json.loads(sync_body(SOUND))
        for field, value in (("utilization_pct", 150), ("temperature_c", 5000), ("ecc_corrected", -1)):
            sent = {**body, "readings": [{"index": 0, field: value}]}
            async with agent.post("/agent/v1/sync", json=sent) as resp:
                answer = await resp.json()
            assert (resp.status, answer["field"]) == (400, f"readings[0].{field}"), answer

        sent = {**body, "readings": [{"index": 0, "power_w": 300.5}, {"index": 9, "power_w": 1}]}
        async with agent.post("/agent/v1/sync", json=sent) as resp:
            assert resp.status == 200, await resp.text()
        kept = c.coordinator.coordinator.device_readings.latest("h1")
        assert {i: s.reading.power_w for i, s in kept.items()} == {0: 300.5}


async def test_a_reading_is_sent_once() -> None:
    async with cluster(replace(NO_WAIT, metrics_interval_s=3600.0)) as c:  # one reading, at the agent's start
        coordinator = c.coordinator.coordinator
        received: list[int] = []  # the readings each sync carried
        twenty_syncs_later = asyncio.Event()
        note = coordinator.device_readings.note

        def spy(host: HostRow, req: SyncRequest, now: float) -> None:
            received.append(len(req.readings))
            if any(received) and len(received) - received.index(next(n for n in received if n)) > 20:
                twenty_syncs_later.set()
            note(host, req, now)

        coordinator.device_readings.note = spy  # type: ignore[method-assign]
        c.start_agent("h1", "4xH100:80GB")
        await asyncio.wait_for(twenty_syncs_later.wait(), 60)

        assert sum(received) == 4, received


def test_take_readings_once_and_drop_what_the_wire_refuses() -> None:
    state = SharedState()
    state.readings = sound((GpuMetrics(index=0, power_w=70.0), GpuMetrics(index=1, temperature_c=5000.0)))
    state.readings_at = 100.0

    assert take_readings(state, 102.5) == ([GpuMetrics(index=0, power_w=70.0)], 2.5)
    assert take_readings(state, 103.0) == ([], 0.0)


def test_the_ring_is_bounded_keeps_time_order_and_forgets_a_removed_host() -> None:
    readings = DeviceReadings(samples_per_gpu=3)
    host = HostRow("h1", "host-a", SOUND, "", 0, None, "ready")

    def note(now: float, age_s: float = 0.5, **values: float) -> None:
        reading = GpuMetrics(index=0, **values)  # type: ignore[arg-type]
        readings.note(
            host,
            SyncRequest(
                agent_version="x", inventory_generation="g", readings=[reading], readings_age_s=age_s
            ),
            now,
        )

    for now in range(10):
        note(float(now), power_w=655.12 + now)
    note(9.0, age_s=2.0, power_w=1.0)  # read before the latest kept: not kept

    assert [(s.at, s.reading.power_w) for s in readings.series("h1", 0)] == [
        (6.5, 662.12),
        (7.5, 663.12),
        (8.5, 664.12),
    ]
    (latest,) = readings.latest("h1").values()
    assert latest.reading == GpuMetrics(index=0, uuid=SOUND.gpus[0].uuid, power_w=664.12)
    readings.forget("h1")
    assert readings.series("h1", 0) == [] and readings.hosts() == []


def test_device_text_is_prometheus_text_with_each_value_in_its_unit() -> None:
    host = 'odd"host\\name\n'
    ring = SampleRing(1, "GPU-1", capacity=4)
    reading = GpuMetrics(
        index=1,
        utilization_pct=97.0,
        memory_used_mib=61234,
        memory_total_mib=81920,
        temperature_c=62.0,
        power_w=655.12,
        sm_clock_mhz=1980.0,
        ecc_corrected=3,
        xids=(13, 79),
    )
    ring.append(5.0, reading)

    found = samples(device_text(([("h1", host, [ring])], {("h1", 1): ("j1", "vision")})))

    def one(name: str, **more: str) -> float:
        wanted = {"host": host, "gpu": "1", "uuid": "GPU-1", "job": "j1", "project": "vision", **more}
        return found[(name, frozenset(wanted.items()))]

    assert one("gpuctl_gpu_utilization_percent") == 97.0
    assert one("gpuctl_gpu_memory_used_bytes") == 61234 * 1024**2
    assert one("gpuctl_gpu_memory_total_bytes") == 80 * 1024**3
    assert one("gpuctl_gpu_power_watts") == 655.12
    assert one("gpuctl_gpu_sm_clock_hertz") == 1.98e9
    assert one("gpuctl_gpu_xid_errors") == 79
    assert one("gpuctl_gpu_ecc_errors_total", type="corrected") == 3
    assert not [key for key in found if ("type", "uncorrected") in key[1]]  # not reported: no sample
