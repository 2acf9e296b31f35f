"""Uploaded file archives are deleted once no job still to start or running names them."""

from __future__ import annotations

import asyncio
import gzip
import os
import time

import msgspec
import pytest

from cli.api import ApiError
from coordinator.service import Settings
from shared.spec import parse_spec
from tests.harness import FAST, cluster


async def test_archives_no_live_job_names_are_deleted_after_the_grace_period() -> None:
    async with cluster(Settings(**{**FAST.__dict__, "files_keep_s": 60})) as c:
        coordinator = c.coordinator.coordinator
        orphan = await asyncio.to_thread(c.api.upload_files, gzip.compress(b"uploaded, never submitted"))
        used = await asyncio.to_thread(c.api.upload_files, gzip.compress(b"named by a pending job"))
        spec = msgspec.structs.replace(parse_spec("commands: [true]\n"), files_archive=used)
        job = await c.submit_spec(spec)  # no host: it stays pending
        leftover = coordinator.files.root / ".upload-0123456789abcdef"  # a crash cut this upload short
        leftover.write_bytes(b"partial")
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))

        assert coordinator.prune_files() == [] and leftover.exists() is False  # young archives stay
        later = time.time() + 61
        assert coordinator.prune_files(now=later) == [orphan]
        assert coordinator.files.has(used)

        await asyncio.to_thread(c.api.stop, job.id)
        assert coordinator.prune_files(now=later) == [used]
        with pytest.raises(ApiError, match="is not on the coordinator; upload it first"):
            await c.submit_spec(spec)
