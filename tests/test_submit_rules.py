"""What the coordinator does to a spec at submit, through its real API (TLS, SQLite): `python:` becomes an
image from its `python_image` setting, and what needs a container is refused for a plain-process job
(400, naming the field). Absolute-path file archives count like `files:` archives for submit and clean-up."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from coordinator.service import Settings
from shared import constants as C
from shared import tls
from shared.spec import TaskSpec
from tests.harness import FAST, Cluster, cluster


def post_job(c: Cluster, spec: TaskSpec) -> tuple[int, dict[str, Any]]:
    """POST /jobs as the CLI would, answering the status and the JSON body (an error names its field)."""
    context = tls.client_context(c.coordinator.pki.ca_cert)
    conn = http.client.HTTPSConnection("localhost", c.coordinator.port, context=context, timeout=30)
    headers = {"Authorization": f"Bearer {c.api.config.token}", "Content-Type": "application/json"}
    try:
        conn.request("POST", C.API_PREFIX + "/jobs", msgspec.json.encode({"spec": spec}), headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def test_python_becomes_the_image_of_the_coordinators_python_image_setting() -> None:
    async with cluster() as c:
        job = await c.submit_spec(TaskSpec(commands=("python -V",), python="3.11"))
        assert (job.spec.image, job.spec.python) == ("python:3.11-slim", "3.11")  # the default setting
        stored = c.coordinator.coordinator.store.get_job(job.id)
        assert stored is not None and stored.spec.image == "python:3.11-slim"  # what agents will pull
    async with cluster(Settings(**{**FAST.__dict__, "python_image": "ml/python:{version}-cuda"})) as c:
        job = await c.submit_spec(TaskSpec(commands=("python -V",), python="3.12"))
        assert job.spec.image == "ml/python:3.12-cuda"


async def test_what_a_job_cannot_have_is_refused_with_the_field() -> None:
    async with cluster() as c:
        cases = {
            "python": TaskSpec(commands=("true",), python="3.11", image="debian"),
            "commands": TaskSpec(commands=()),
            "files": TaskSpec(commands=("true",), root_files_archive="0" * 64),
        }
        answers = {field: await asyncio.to_thread(post_job, c, spec) for field, spec in cases.items()}
        assert {field: (status, body["field"]) for field, (status, body) in answers.items()} == {
            field: (400, field) for field in cases
        }
        assert "python and image cannot be used together" in answers["python"][1]["error"]
        assert answers["files"][1]["error"].startswith(
            "spec: files: an absolute path needs a container (image:)"
        )
        bad = await asyncio.to_thread(post_job, c, TaskSpec(commands=("true",), python="3.11; rm -rf /"))
        assert bad[0] == 400 and bad[1]["field"] == "python"
        assert await asyncio.to_thread(c.api.jobs, True) == []  # nothing refused was stored


async def test_an_absolute_path_archive_must_be_uploaded_and_is_kept_while_its_job_lives() -> None:
    async with cluster(Settings(**{**FAST.__dict__, "files_keep_s": 60})) as c:
        coordinator = c.coordinator.coordinator
        missing = TaskSpec(commands=("true",), image="debian", root_files_archive="1" * 64)
        status, body = await asyncio.to_thread(post_job, c, missing)
        assert (status, body["field"]) == (400, "files") and "is not on the coordinator" in body["error"]
        root_files = await asyncio.to_thread(c.api.upload_files, gzip.compress(b"for /root"))
        job = await c.submit_spec(msgspec.structs.replace(missing, root_files_archive=root_files))
        later = time.time() + 61
        assert coordinator.prune_files(now=later) == [] and coordinator.files.has(root_files)
        await asyncio.to_thread(c.api.stop, job.id)
        assert coordinator.prune_files(now=later) == [root_files]


def test_the_python_image_setting_is_read_from_coordinator_yaml(tmp_path: Path) -> None:
    from coordinator.main import _load

    config = tmp_path / "coordinator.yaml"
    config.write_text("python_image: mirror.dc1/python:{version}\n")
    assert _load(config, tmp_path, None, None).settings.python_image == "mirror.dc1/python:{version}"
    config.write_text("python_image: [not, an, image]\n")
    init = [sys.executable, "-c", "from coordinator.main import main; main()", "init"]
    run = subprocess.run([*init, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("Error: python_image: expected an image like python:{version}-slim")
