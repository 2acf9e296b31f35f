"""What a job runs: its commands under its `shell` (sh, bash or an absolute path, with `set -e`) in plain
processes and containers, or, in a container without commands, the image's own entrypoint and cmd."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import DockerConfig
from agent.env import job_env
from agent.runtime.base import Observed
from agent.runtime.docker import DockerRuntime
from agent.runtime.engine import connect
from coordinator.service import Settings
from shared.spec import TaskSpec
from shared.wire import AllocationSpec, Inventory
from tests.docker_engine import Engine, busybox_rootfs, busybox_static
from tests.fake_registry import fake_registry, image_from_rootfs
from tests.harness import FAST, cluster
from tests.test_docker import start_docker_agent

SHOW_SHELL = ("echo $0", "false", "echo never")  # set -e: the job ends at `false`, with its exit code


@pytest.fixture(scope="module")
def program_image(docker_engine: Engine) -> Iterator[str]:
    """The test image plus a second shell at /opt/shells/ash, an entrypoint, a cmd and a working dir."""
    client, name = docker_engine.client, "gpuctl-test/program:1"
    base = client.containers.create(docker_engine.image, ["sh", "-c", "mkdir -p /opt/shells /app"])
    try:
        base.start()
        base.wait(timeout=30)
        with_ash = client.api.commit(base.id, "gpuctl-test/program", "0")
    finally:
        base.remove(force=True)
    link = client.containers.create(with_ash["Id"], ["ln", "-s", "/bin/busybox", "/opt/shells/ash"])
    try:
        link.start()
        link.wait(timeout=30)
        entry = ["/bin/sh", "-c", 'echo "$0 $1 in $(pwd) for $GPUCTL_JOB_ID"; echo to stderr >&2', "entry"]
        conf = {"Entrypoint": entry, "Cmd": ["from-cmd"], "WorkingDir": "/app"}
        client.api.commit(link.id, "gpuctl-test/program", "1", conf=conf)
    finally:
        link.remove(force=True)
    yield name
    client.images.remove(name, force=True)
    client.images.remove("gpuctl-test/program:0", force=True)


async def test_plain_processes_run_their_commands_with_the_jobs_shell() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    async with cluster() as c:
        c.start_agent("shell-p")
        for shell, expected in ((None, "/bin/sh"), ("sh", "/bin/sh"), ("bash", "/bin/bash"), (bash, bash)):
            job = await c.submit_spec(TaskSpec(commands=SHOW_SHELL, shell=shell))
            log = (await c.full_log(job.id)).decode()
            final = await c.job(job.id)
            assert (final.status, final.exit_code, log) == ("failed", 1, f"{expected}\n"), shell


async def test_containers_run_their_commands_with_the_jobs_shell(
    docker_engine: Engine, program_image: str
) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "shell-d")
        job = await c.submit_spec(TaskSpec(commands=SHOW_SHELL, image=program_image, shell="/opt/shells/ash"))
        assert (await c.full_log(job.id)).decode() == "/opt/shells/ash\n"
        assert ((await c.job(job.id)).status, (await c.job(job.id)).exit_code) == ("failed", 1)
        default = await c.submit_spec(TaskSpec(commands=SHOW_SHELL[:1], image=program_image, shell="sh"))
        assert (await c.full_log(default.id)).decode() == "/bin/sh\n"
        # The image has no bash: docker-init says so, which shows that bash was asked for.
        bash = await c.submit_spec(TaskSpec(commands=("true",), image=program_image, shell="bash"))
        log = (await c.full_log(bash.id)).decode()
        assert "exec /bin/bash failed" in log and (await c.job(bash.id)).exit_code == 127, log


def run_container(engine: Engine, spec: TaskSpec, state_dir: Path) -> tuple[Observed, str]:
    """One allocation through the real Docker runtime, to its end: how it ended and its log."""
    inventory = Inventory("h-program", 1, 256, 1000, (), (), ("process", "docker"))
    alloc = AllocationSpec(
        f"a-program-{state_dir.name}", "j-program", "program", "run", spec, (0,), (), (0,), 128
    )
    config = DockerConfig(socket=engine.socket)
    runtime = DockerRuntime(connect(engine.socket), inventory, config, "h-program", state_dir)  # closes it
    alloc_dir = state_dir / "allocs" / alloc.id
    alloc_dir.mkdir(parents=True)
    try:
        runtime.start(
            alloc, job_env(alloc, inventory, str(alloc_dir / "work")), alloc_dir, alloc_dir / "output.log"
        )
        deadline = time.monotonic() + 60
        while not (observed := runtime.observe(alloc_dir)).state.terminal:
            assert time.monotonic() < deadline, observed
            time.sleep(0.1)
        return observed, (alloc_dir / "output.log").read_text()
    finally:
        runtime.close()
        engine.client.api.remove_container(f"gpuctl-{alloc.id}", force=True)


def test_a_container_without_commands_runs_the_images_entrypoint_and_cmd(
    docker_engine: Engine, program_image: str, tmp_path: Path
) -> None:
    ended, log = run_container(docker_engine, TaskSpec(image=program_image), tmp_path / "a")
    assert (ended.state.value, ended.exit_code) == ("exited", 0)
    assert sorted(log.splitlines()) == ["entry from-cmd in /app for j-program", "to stderr"]
    elsewhere = TaskSpec(image=program_image, working_dir="/tmp")
    assert (
        "entry from-cmd in /tmp for j-program" in run_container(docker_engine, elsewhere, tmp_path / "b")[1]
    )


async def test_a_python_job_pulls_the_image_its_version_names_through_the_mirror(
    docker_engine: Engine,
) -> None:
    image = image_from_rootfs(busybox_rootfs(busybox_static()))
    settings = Settings(**{**FAST.__dict__, "python_image": "lang/python:{version}-slim"})
    async with cluster(settings) as c:
        with fake_registry(image, "puller", "s3cret", layer_seconds=0.0) as mirror:
            auth = {"registry_username": "puller", "registry_password": "s3cret"}
            start_docker_agent(c, docker_engine, "python-p", registry_mirror=mirror, **auth)
            job = await c.submit_spec(TaskSpec(commands=("echo in the python image",), python="3.11"))
            assert (job.spec.image, job.spec.python) == ("lang/python:3.11-slim", "3.11")
            assert (await c.full_log(job.id)).decode() == "in the python image\n"
            assert (await c.job(job.id)).status == "done"
    docker_engine.client.images.remove(f"{mirror}/lang/python:3.11-slim", force=True)
