"""Files at absolute paths (`files: [~/.ssh/id_rsa:/root/.ssh/id_rsa]`): the agent fetches their archive like
`files:`, checks it, and copies it into the container before it starts (real dockerd, real coordinator)."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile

from shared.spec import TaskSpec
from tests.docker_engine import Engine
from tests.harness import cluster
from tests.test_docker import start_docker_agent


def tar_gz(*members: tuple[str, bytes, int]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data, mode in members:
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode, entry.uid = len(data), mode, 1234
            tar.addfile(entry, io.BytesIO(data))
    return gzip.compress(out.getvalue())


async def test_files_at_absolute_paths_are_in_the_container_when_it_starts(docker_engine: Engine) -> None:
    archive = tar_gz(("root/.ssh/id_rsa", b"PRIVATE KEY\n", 0o600), ("workspace/x", b"x marks\n", 0o644))
    commands = ("stat -c '%a %u %n' /root/.ssh/id_rsa /workspace/x", "cat /root/.ssh/id_rsa /workspace/x")
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "rootfiles-a")
        archive_id = await asyncio.to_thread(c.api.upload_files, archive)
        spec = TaskSpec(commands=commands, image=docker_engine.image, root_files_archive=archive_id)
        job = await c.submit_spec(spec)
        log = (await c.full_log(job.id)).decode()
        assert (await c.job(job.id)).status == "done", log
        assert log.splitlines() == [
            "600 0 /root/.ssh/id_rsa",  # its mode kept, owned by root
            "644 0 /workspace/x",
            "PRIVATE KEY",
            "x marks",
        ]


async def test_an_archive_that_climbs_out_fails_the_job_before_any_container(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "rootfiles-b")
        archive_id = await asyncio.to_thread(c.api.upload_files, tar_gz(("../../etc/evil", b"x", 0o644)))
        spec = TaskSpec(commands=("true",), image=docker_engine.image, root_files_archive=archive_id)
        failed = await c.wait_for((await c.submit_spec(spec)).id, "failed")
        assert failed.reason.startswith("files: cannot unpack the absolute-path archive: "), failed.reason
