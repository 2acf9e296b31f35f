"""`GET /metrics`: a real coordinator's families, read with prometheus-client's own text parser, and its
scrape token (no other token will do)."""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from cli.api import Api
from cli.config import CliConfig
from shared.spec import parse_spec
from shared.wire import UserCreate
from tests.harness import FAST, Cluster, cluster

JOB = "commands: ['echo up', 'sleep 300']\nresources: {gpu: 2}"


def scrape(c: Cluster, token: str | None) -> tuple[int, str]:
    """The status and body of `GET /metrics` with `token` (None: no Authorization header)."""
    request = urllib.request.Request(c.coordinator.url + "/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(c.coordinator.pki.ca_cert))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, its labels) -> value, for every sample of every family."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def member_of(c: Cluster, project: str) -> Api:
    await asyncio.to_thread(c.api.create_project, project)
    user = await asyncio.to_thread(c.api.create_user, UserCreate(name=f"{project}-dev", project=project))
    return Api(CliConfig(c.api.config.url, user.token, c.api.config.ca_file), timeout_s=30.0)


async def logged(api: Api, job_id: str, text: bytes) -> bytes:
    """The job's log once it holds `text`."""
    while True:
        chunk = await asyncio.to_thread(api.logs, job_id, 0, False)
        if text in chunk.data:
            return chunk.data
        await asyncio.sleep(0.1)


async def test_a_scrape_finds_each_family_with_a_running_jobs_project() -> None:
    async with cluster() as c:
        c.start_agent("host-a", "8xH100:80GB", "auto")  # 8 blocks of 1 GPU
        vision = await member_of(c, "vision")
        job = await asyncio.to_thread(vision.submit, parse_spec(JOB))
        await c.wait_for(job.id, "running")
        log = await logged(vision, job.id, b"up")
        token = (c.root / "coordinator" / "metrics.token").read_text().strip()

        status, text = await asyncio.to_thread(scrape, c, token)

        assert status == 200, text
        found = samples(text)
        assert value(found, "gpuctl_jobs", state="running", project="vision") == 1
        assert value(found, "gpuctl_job_queue_wait_seconds_count", project="vision") == 1
        assert value(found, "gpuctl_job_submit_to_running_seconds_count", project="vision") == 1
        assert value(found, "gpuctl_hosts", state="ready") == 1
        assert value(found, "gpuctl_blocks", fleet="default") == 8
        assert value(found, "gpuctl_blocks_busy", fleet="default") == 2
        syncs = value(found, "gpuctl_agent_syncs_total")
        assert syncs > 0 and value(found, "gpuctl_agent_sync_seconds_count") == syncs
        assert value(found, "gpuctl_log_bytes_total", project="vision") >= len(log)
        assert all(
            name not in ("job", "host")
            for sample, labels in found
            if not sample.startswith("gpuctl_gpu_")  # the device families alone name hosts and jobs
            for name, _ in labels
        )


async def test_only_the_scrape_token_reads_metrics() -> None:
    async with cluster() as c:
        vision = await member_of(c, "vision")
        for token in (None, "gpuctl_metrics_wrong", c.api.config.token, vision.config.token):
            status, text = await asyncio.to_thread(scrape, c, token)
            assert status == 401, token
            assert "scrape token" in text


async def test_a_silent_host_counts_as_unreachable() -> None:
    async with cluster(replace(FAST, unreachable_after_s=1.0)) as c:
        c.start_agent("host-a", "8xH100:80GB", "auto")
        token = (c.root / "coordinator" / "metrics.token").read_text().strip()
        states = await hosts_once(c, token, lambda s: s.get("ready") == 1)
        await scraped(c, token, lambda found: any(name.startswith("gpuctl_gpu_") for name, _ in found))
        await c.stop_agent("host-a")

        states = await hosts_once(c, token, lambda s: "ready" not in s)

        assert states == {"unreachable": 1}
        _, text = await asyncio.to_thread(scrape, c, token)
        assert not [
            name for name, _ in samples(text) if name.startswith("gpuctl_gpu_")
        ]  # its readings are old


async def hosts_once(c: Cluster, token: str, wanted: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """`gpuctl_hosts` by state, once `wanted` holds of it."""
    async with asyncio.timeout(60):
        while True:
            _, text = await asyncio.to_thread(scrape, c, token)
            found = samples(text).items()
            states = {dict(labels)["state"]: v for (name, labels), v in found if name == "gpuctl_hosts"}
            if wanted(states):
                return states
            await asyncio.sleep(0.2)


DEVICE_GAUGES = (
    "gpuctl_gpu_utilization_percent",
    "gpuctl_gpu_memory_used_bytes",
    "gpuctl_gpu_memory_total_bytes",
    "gpuctl_gpu_temperature_celsius",
    "gpuctl_gpu_power_watts",
    "gpuctl_gpu_sm_clock_hertz",
    "gpuctl_gpu_xid_errors",
)


async def test_device_families_carry_the_running_jobs_labels() -> None:
    async with cluster(replace(FAST, metrics_interval_s=0.2)) as c:
        c.start_agent("host-a", "4xH100:80GB", "auto")
        vision = await member_of(c, "vision")
        job = await asyncio.to_thread(vision.submit, parse_spec(JOB))
        running = await c.wait_for(job.id, "running")
        token = (c.root / "coordinator" / "metrics.token").read_text().strip()

        def labels(gpu: int, **more: str) -> dict[str, str]:
            held = gpu in running.gpus
            return {
                "host": "host-a",
                "gpu": str(gpu),
                "uuid": f"GPU-sim-00000000-0000-0000-0000-{gpu:012x}",
                "job": job.id if held else "",
                "project": "vision" if held else "",
                **more,
            }

        def working(found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> bool:
            key = ("gpuctl_gpu_utilization_percent", frozenset(labels(running.gpus[0]).items()))
            return found.get(key, 0) > 0

        found = await scraped(c, token, working)

        for gpu in range(4):
            for family in DEVICE_GAUGES:
                assert value(found, family, **labels(gpu)) >= 0, (family, gpu)
            for kind in ("corrected", "uncorrected"):
                assert value(found, "gpuctl_gpu_ecc_errors_total", **labels(gpu, type=kind)) == 0
        held = labels(running.gpus[0])
        assert value(found, "gpuctl_gpu_memory_total_bytes", **held) == 80 * 1024**3
        assert value(found, "gpuctl_gpu_sm_clock_hertz", **held) > 1e9
        assert value(found, "gpuctl_gpu_xid_errors", **held) == 0  # no XID: 0, as DCGM exporter says it


async def scraped(
    c: Cluster, token: str, wanted: Callable[[dict[tuple[str, frozenset[tuple[str, str]]], float]], bool]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, once `wanted` holds of them."""
    async with asyncio.timeout(60):
        while True:
            _, text = await asyncio.to_thread(scrape, c, token)
            found = samples(text)
            if wanted(found):
                return found
            await asyncio.sleep(0.2)
