"""A restarted agent re-adopts its containers: killed with -9 during a job, the next agent re-attaches to the
container's log (no line lost, none twice) and the job runs once; containers whose allocation was stopped
meanwhile, or that belong to no allocation, are removed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import yaml

from agent.runtime.container import LABEL_ALLOC, LABEL_HOST, LABEL_JOB
from tests.docker_engine import Engine
from tests.harness import Cluster, cluster
from tests.test_restart import spawn_agent

LONG_LINE = "x" * 40000  # the engine stores it as three messages with one timestamp
JOB = """
image: {image}
volumes: [{shared}:/shared]
commands:
  - echo started >> /shared/starts
  - for n in $(seq 0 59); do echo "tick $n"; [ $n != 30 ] || {{ head -c 40000 /dev/zero | tr '\\0' x; echo; }}; sleep 0.05; done
  - exit 7
"""


def write_agent_config(c: Cluster, engine: Engine, name: str, shared: Path) -> Path:
    config = c.agent_config(name, "1xH100:80GB")
    path = c.root / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "coordinator": config.coordinator,
                "state_dir": str(config.state_dir),
                "name": name,
                "simulate": "1xH100:80GB",
                "simulate_cpus": 1,
                "simulate_memory": "256MB",
                "ca_file": str(config.ca_file),
                "cert_file": str(config.cert_file),
                "key_file": str(config.key_file),
                "docker": {"socket": engine.socket, "volume_prefixes": [str(shared)]},
            }
        )
    )
    return path


def kill_9(agent: subprocess.Popen[bytes]) -> None:
    agent.send_signal(signal.SIGKILL)
    agent.wait()


async def test_agent_killed_during_a_container_job_reattaches_and_the_log_arrives_once(
    docker_engine: Engine,
) -> None:
    async with cluster() as c:
        shared = c.root / "shared"
        shared.mkdir()
        config = write_agent_config(c, docker_engine, "dock-r", shared)
        agent = spawn_agent(config, c.root / "agent.log")
        try:
            job = await c.submit(JOB.format(image=docker_engine.image, shared=shared))
            await c.wait_for(job.id, "running", timeout_s=30)
            await asyncio.sleep(1.0)  # part of the output is copied and shipped, part not yet
            kill_9(agent)
            await asyncio.sleep(0.5)
            agent = spawn_agent(config, c.root / "agent.log")
            log = (await c.full_log(job.id, timeout_s=60)).decode()
        finally:
            kill_9(agent)
        final = await c.job(job.id)
        assert (final.status, final.exit_code) == ("failed", 7)
        assert (shared / "starts").read_text() == "started\n", "the job must have run exactly once"
        expected = [f"tick {n}" for n in range(31)] + [LONG_LINE] + [f"tick {n}" for n in range(31, 60)]
        assert log.splitlines() == expected
        assert "re-adopted allocation" in (c.root / "agent.log").read_text()


async def test_a_restarted_agent_stops_what_was_stopped_meanwhile_and_removes_unknown_containers(
    docker_engine: Engine,
) -> None:
    async with cluster() as c:
        config = write_agent_config(c, docker_engine, "dock-s", c.root)
        agent = spawn_agent(config, c.root / "agent.log")
        try:
            job = await c.submit(f"image: {docker_engine.image}\ncommands: ['echo up', 'sleep 300']\n")
            await c.wait_for(job.id, "running", timeout_s=30)
            kill_9(agent)
            await asyncio.to_thread(c.api.stop, job.id)  # desired: stop, while no agent listens
            orphan = docker_engine.client.containers.run(
                docker_engine.image,
                ["sleep", "300"],
                name="gpuctl-a-orphan",
                labels={LABEL_HOST: "dock-s", LABEL_ALLOC: "a-orphan"},
                network_mode="none",
                detach=True,
            )
            agent = spawn_agent(config, c.root / "agent.log")
            stopped = await c.wait_for(job.id, "stopped", timeout_s=30)
            assert stopped.exit_code == 128 + 15  # SIGTERM reached the commands
            deadline = time.monotonic() + 20
            while docker_engine.client.api.containers(all=True, filters={"label": f"{LABEL_HOST}=dock-s"}):
                assert time.monotonic() < deadline, "the stopped job's and the orphan's containers must go"
                await asyncio.sleep(0.2)
        finally:
            kill_9(agent)
        assert not docker_engine.client.api.containers(all=True, filters={"id": orphan.id})
        assert not docker_engine.client.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job.id}"})
