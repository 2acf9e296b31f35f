"""The coordinator's disk: a free-space floor (real readings), a per-project upload quota, and their settings."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.api import ApiError
from cli.main import main as gpuctl
from coordinator.disk_settings import limit_settings
from coordinator.service import Settings
from tests.harness import FAST, Cluster, cluster

HUGE = 1 << 60  # a floor above any disk's free space: the real reading is under it


def archive(seed: int, size: int) -> bytes:
    """A tar.gz of incompressible bytes, so its size is about `size`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = os.urandom(size) + seed.to_bytes(4, "big")
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cli(c: Cluster, tmp_path: Path, *args: str) -> tuple[int, str]:
    config = tmp_path / "cli.yaml"
    api = c.api.config
    config.write_text(f"url: {api.url}\ntoken: {api.token}\nca_file: {api.ca_file}\n")
    result = CliRunner().invoke(gpuctl, list(args), env={"GPUCTL_CONFIG": str(config)})
    return result.exit_code, result.output


async def test_under_the_disk_floor_submits_and_uploads_are_refused_naming_the_disk(tmp_path: Path) -> None:
    async with cluster(dataclasses.replace(FAST, disk_floor_bytes=HUGE)) as c:
        state = c.root / "coordinator"
        with pytest.raises(ApiError, match=rf"^coordinator disk {state} has .* free, under its .* floor"):
            await c.submit("commands: [true]")
        with pytest.raises(ApiError, match=r"^coordinator disk .* floor"):
            await asyncio.to_thread(c.api.upload_files, archive(1, 100))
        code, out = await asyncio.to_thread(cli, c, tmp_path, "submit", "-d", "--", "true")
        assert code == 1 and f"coordinator disk {state} has" in out, out
        code, out = await asyncio.to_thread(cli, c, tmp_path, "hosts")
        assert code == 0 and f"coordinator: coordinator disk {state} has" in out, out


async def test_running_jobs_keep_shipping_logs_under_the_floor() -> None:
    async with cluster() as c:
        c.start_agent("floor-a")
        job = await c.submit("commands: ['sleep 1', 'echo still here']")
        await c.wait_for(job.id, "running")
        c.coordinator.coordinator.disk.floor_bytes = HUGE  # the disk fills up while the job runs
        assert (await c.full_log(job.id)).decode() == "still here\n"
        _, warning = await asyncio.to_thread(c.api.hosts_and_warning)
        assert warning.startswith("coordinator disk ")


async def test_a_project_over_its_upload_quota_is_refused_with_the_quota_named() -> None:
    async with cluster(dataclasses.replace(FAST, upload_quota_bytes=300_000)) as c:
        first = archive(1, 200_000)
        first_id = await asyncio.to_thread(c.api.upload_files, first)
        assert await asyncio.to_thread(c.api.upload_files, first) == first_id  # the same again costs nothing
        with pytest.raises(
            ApiError, match=r"^files: project 'default' would store .*, over its upload quota"
        ):
            await asyncio.to_thread(c.api.upload_files, archive(2, 200_000))
        coord = c.coordinator.coordinator
        assert coord.files.has(first_id) and len(list(coord.files.root.iterdir())) == 1  # nothing else kept
        coord.prune_files(now=10**12)  # the first archive is deleted: the quota is free again
        await asyncio.to_thread(c.api.upload_files, archive(2, 200_000))


def test_the_limits_are_coordinator_settings() -> None:
    settings = limit_settings({"log_cap": "2GB", "upload_quota": "512MB", "disk_floor": "5%"}, Settings())
    assert settings.log_cap_bytes == 2 * 1024**3 and settings.upload_quota_bytes == 512 * 1024**2
    assert (settings.disk_floor_bytes, settings.disk_floor_percent) == (0, 5.0)
    assert limit_settings({"disk_floor": "3GiB"}, Settings()).disk_floor_bytes == 3 * 1024**3
    for raw, message in [
        ({"disk_floor": "120%"}, "disk_floor: expected a size like 1GiB or a share like 5%"),
        ({"upload_quota": "lots"}, "upload_quota: expected a size"),
        ({"log_cap": "1KB"}, "log_cap: expected a size"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}"):
            limit_settings(raw, Settings())
