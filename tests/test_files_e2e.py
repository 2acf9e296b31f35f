"""`files:` end to end: the CLI packs and uploads, the coordinator stores, the agent fetches over mutual TLS
and unpacks into the working directory, and the job reads its files (plain processes and containers)."""

from __future__ import annotations

import asyncio
import http.client
import os
import ssl
from pathlib import Path

import msgspec
import pytest

from cli.api import ApiError
from cli.main import build_spec, upload_files
from coordinator.pki import issue_agent_cert
from shared import constants as C
from shared import tls
from shared.spec import TaskSpec
from tests.docker_engine import Engine
from tests.harness import Cluster, cluster
from tests.test_docker import start_docker_agent

TASK = """
name: reader
files:
  - train.py
  - local_path: conf
    path: cfg
  - data
commands:
  - cat train.py cfg/lr.txt
  - ls data
  - pwd
"""


def project(root: Path, task: str = TASK) -> Path:
    """A small project folder with a task file; answers the task file."""
    (root / "train.py").write_text("print('training')\n")
    (root / "conf").mkdir()
    (root / "conf" / "lr.txt").write_text("lr=0.001\n")
    (root / "data").mkdir()
    (root / "data" / ".gitignore").write_text("*.bin\n")
    (root / "data" / "keep.csv").write_text("a,b\n")
    (root / "data" / "skip.bin").write_bytes(b"\0" * 10)
    (root / "task.yaml").write_text(task)
    return root / "task.yaml"


async def submit_file(c: Cluster, task_file: Path, *extra: str) -> str:
    submission = build_spec(task_file, None, None, None, (), tuple(extra))
    spec = await asyncio.to_thread(upload_files, c.api, submission)
    assert spec.files_archive is not None and str(task_file.parent) not in msgspec.json.encode(spec).decode()
    return (await c.submit_spec(spec)).id


async def test_a_job_sees_its_files_in_its_working_directory(tmp_path: Path) -> None:
    task_file = project(tmp_path)
    async with cluster() as c:
        c.start_agent("files-a")
        job_id = await submit_file(c, task_file)
        log = (await c.full_log(job_id)).decode()
        final = await c.job(job_id)
        assert final.status == "done", log
        lines = log.splitlines()
        assert lines[:2] == ["print('training')", "lr=0.001"]
        assert lines[2:3] == ["keep.csv"]  # data/.gitignore left skip.bin out (and is itself hidden by ls)
        assert lines[3].endswith("/work")  # the allocation's work folder: HOME and cwd


async def test_the_whole_current_folder_is_packed_with_a_flag(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("secret.txt\n")
    (tmp_path / "secret.txt").write_text("nope\n")
    (tmp_path / "hello.txt").write_text("hello from the folder\n")
    (tmp_path / "task.yaml").write_text("commands: [cat hello.txt, 'test ! -e secret.txt']\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        async with cluster() as c:
            c.start_agent("files-b")
            job_id = await submit_file(c, tmp_path / "task.yaml", ".")
            log = (await c.full_log(job_id)).decode()
            assert (await c.job(job_id)).status == "done", log
            assert log == "hello from the folder\n"
    finally:
        os.chdir(cwd)


async def test_an_archive_not_on_the_coordinator_is_refused_at_submit() -> None:
    async with cluster() as c:
        with pytest.raises(ApiError, match="^spec: files: archive 000000000000 is not on the coordinator"):
            await c.submit_spec(TaskSpec(commands=("true",), files_archive="0" * 64))


def raw_upload(c: Cluster, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    context = tls.client_context(c.coordinator.pki.ca_cert)
    conn = http.client.HTTPSConnection("localhost", c.coordinator.port, context=context, timeout=30)
    try:
        chunked = "Transfer-Encoding" in headers
        conn.request("POST", C.API_PREFIX + "/files", body=body, headers=headers, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def test_uploads_are_idempotent_bounded_and_need_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async with cluster() as c:
        first = await asyncio.to_thread(c.api.upload_files, b"some bytes")
        assert first == await asyncio.to_thread(c.api.upload_files, b"some bytes")
        assert len(first) == 64
        status, _ = await asyncio.to_thread(raw_upload, c, b"x", {})
        assert status == 401
        monkeypatch.setattr(C, "MAX_FILES_ARCHIVE_BYTES", 1024 * 1024)
        with pytest.raises(ApiError) as caught:  # the declared length is refused before the body is read
            await asyncio.to_thread(c.api.upload_files, b"x" * (1024 * 1024 + 1))
        assert str(caught.value) == "files: the archive is over the coordinator's limit of 1 MiB"
        token = {"Authorization": f"Bearer {c.api.config.token}", "Transfer-Encoding": "chunked"}
        chunks = iter([b"y" * 600_000, b"y" * 600_000])  # no length: refused once the bytes pass the limit
        status, body = await asyncio.to_thread(raw_upload, c, chunks, token)  # type: ignore[arg-type]
        assert status == 413 and b"over the coordinator's limit" in body
        assert sorted(p.name for p in (c.coordinator.coordinator.files.root).iterdir()) == [f"{first}.tar.gz"]


def agent_get(c: Cluster, context: ssl.SSLContext, url: str) -> tuple[int, bytes]:
    """(status, body of a 200); a refused handshake reads as 401."""
    conn = http.client.HTTPSConnection("localhost", c.coordinator.port, context=context, timeout=30)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, resp.read() if resp.status == 200 else b""
    except (ssl.SSLError, ConnectionError):
        return 401, b""
    finally:
        conn.close()


async def test_only_enrolled_agents_fetch_archives_and_a_missing_one_fails_the_job() -> None:
    async with cluster() as c:
        archive_id = await asyncio.to_thread(c.api.upload_files, b"not a tar")
        pki = c.coordinator.pki
        url = f"{C.AGENT_PREFIX}/files/{archive_id}"
        anonymous = tls.client_context(pki.ca_cert)
        cert, key = issue_agent_cert(pki, "peek", c.root / "peek")
        enrolled = tls.client_context(pki.ca_cert, cert, key)
        assert await asyncio.to_thread(agent_get, c, anonymous, url) == (401, b"")
        assert await asyncio.to_thread(agent_get, c, enrolled, url) == (200, b"not a tar")
        c.start_agent("files-c")
        job = await c.submit_spec(TaskSpec(commands=("true",), files_archive=archive_id))
        final = await c.wait_for(job.id, "failed")
        assert final.reason.startswith("files: cannot unpack the archive: "), final.reason


async def test_a_container_job_sees_its_files_in_its_working_directory(
    docker_engine: Engine, tmp_path: Path
) -> None:
    task_file = project(tmp_path, f"image: {docker_engine.image}\n" + TASK)
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "files-d")
        job_id = await submit_file(c, task_file)
        log = (await c.full_log(job_id)).decode()
        assert (await c.job(job_id)).status == "done", log
        assert log.splitlines() == ["print('training')", "lr=0.001", "keep.csv", "/workflow"]
