"""The Docker runtime on a real engine (a private dockerd, see docker_engine), through the real coordinator:
output and exit codes, limits seen from inside the container, stop and max_duration, volumes, OOM, pulls."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from agent.config import DockerConfig
from agent.runtime.container import LABEL_JOB
from tests.docker_engine import Engine
from tests.harness import Cluster, cluster

MIB = 1024 * 1024


def start_docker_agent(c: Cluster, engine: Engine, name: str, memory: str = "256MB", **docker: Any) -> None:
    """An agent with one simulated GPU, one CPU (id 0) and `memory`, using the test engine."""
    c.start_agent(
        name,
        "1xH100:80GB",
        simulate_cpus=1,
        simulate_memory_mib=int(memory.removesuffix("MB")),
        docker=DockerConfig(socket=engine.socket, **docker),
    )


def containers_of(engine: Engine, job_id: str) -> list[Any]:
    return engine.client.containers.list(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})


async def test_a_container_job_prints_its_output_and_keeps_its_exit_code(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-a")
        job = await c.submit(
            f"image: {docker_engine.image}\n"
            "commands:\n"
            '  - echo "job $GPUCTL_JOB_ID $DSTACK_JOB_ID gpus=$CUDA_VISIBLE_DEVICES in $(pwd)"\n'
            "  - for n in $(seq 1 500); do echo line $n; done\n"
            "  - echo to stderr >&2\n"
            "  - exit 3\n"
        )
        log = (await c.full_log(job.id)).decode()
        final = await c.job(job.id)
        assert (final.status, final.exit_code) == ("failed", 3)
        lines = log.splitlines()
        assert lines[0] == f"job {job.id} {job.id} gpus=0 in /workflow"
        assert lines[1:501] == [f"line {n}" for n in range(1, 501)]
        assert lines[501:] == ["to stderr"]
        # Ended, every byte shipped: the agent forgets the allocation and removes its container.
        deadline = time.monotonic() + 10
        while containers_of(docker_engine, job.id):
            assert time.monotonic() < deadline, "the ended job's container was never removed"
            await asyncio.sleep(0.1)


async def test_the_container_gets_exactly_its_blocks_share(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-b", memory="192MB", pids_limit=321)
        # cgroup v1 and v2 name the same limits differently; print whichever this host has.
        job = await c.submit(
            f"image: {docker_engine.image}\n"
            "resources: {shm_size: 48MB}\n"
            "commands:\n"
            "  - cd /sys/fs/cgroup\n"
            "  - echo memory=$(cat memory/memory.limit_in_bytes 2>/dev/null || cat memory.max)\n"
            "  - echo cpus=$(cat cpuset/cpuset.cpus 2>/dev/null || cat cpuset.cpus.effective)\n"
            "  - echo pids=$(cat pids/pids.max 2>/dev/null || cat pids.max)\n"
            "  - echo shm=$(df -k /dev/shm | tail -1 | awk '{print $2}')\n"
        )
        log = (await c.full_log(job.id)).decode()
        assert (await c.job(job.id)).status == "done", log
        seen = dict(re.findall(r"^(\w+)=(\S+)$", log, re.M))
        assert seen == {"memory": str(192 * MIB), "cpus": "0", "pids": "321", "shm": str(48 * 1024)}, log
