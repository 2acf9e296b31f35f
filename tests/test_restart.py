"""Restarts heal by the next sync: an agent killed with -9 re-adopts its job (which ran exactly once, and
whose log arrives whole, once); a restarted coordinator loses no job and no acknowledged log byte."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.harness import FAST, cluster

SLOW_JOB = """
resources: {{gpu: 2}}
commands:
  - echo started >> {marker}
  - for n in $(seq 0 59); do echo "tick $n"; sleep 0.05; done
  - exit 7
"""


def spawn_agent(config_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from agent.main import main; main()",
                "run",
                "--config",
                str(config_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )


async def test_agent_killed_mid_job_readopts_it_and_the_job_runs_once() -> None:
    async with cluster() as c:
        config = c.agent_config("host-r", "4xH100:80GB")
        config_file = c.root / "agent.yaml"
        config_file.write_text(
            yaml.safe_dump(
                {
                    "coordinator": config.coordinator,
                    "state_dir": str(config.state_dir),
                    "name": config.name,
                    "simulate": config.simulate,
                    "ca_file": str(config.ca_file),
                    "cert_file": str(config.cert_file),
                    "key_file": str(config.key_file),
                }
            )
        )
        shared = c.root / "shared"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)  # the job runs as an unprivileged user
        marker = shared / "starts"
        agent = spawn_agent(config_file, c.root / "agent.log")
        try:
            job = await c.submit(SLOW_JOB.format(marker=marker))
            await c.wait_for(job.id, "running", timeout_s=30)
            await asyncio.sleep(1.0)  # part of the output is shipped, part not yet
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            await asyncio.sleep(0.5)
            agent = spawn_agent(config_file, c.root / "agent.log")
            log = (await c.full_log(job.id, timeout_s=60)).decode()
        finally:
            agent.kill()
            agent.wait()
        final = await c.job(job.id)
        assert final.status == "failed" and final.exit_code == 7
        assert marker.read_text() == "started\n", "the job must have run exactly once"
        assert log.splitlines() == [f"tick {n}" for n in range(60)]
        agent_log = (c.root / "agent.log").read_text()
        assert "re-adopted allocation" in agent_log, agent_log


async def test_restarted_coordinator_keeps_jobs_and_acknowledged_logs() -> None:
    async with cluster() as c:
        c.start_agent("host-p", "1xL4")
        done = await c.submit("commands: ['seq 1 1000']\nresources: {gpu: 1}")
        before = await c.full_log(done.id)
        pending = await c.submit("commands: [true]\nresources: {gpu: 4}")
        await c.stop_agent("host-p")
        await c.restart_coordinator(dataclasses.replace(FAST, unreachable_after_s=1.0))
        assert (await c.job(done.id)).status == "done"
        assert await c.full_log(done.id) == before == "".join(f"{n}\n" for n in range(1, 1001)).encode()
        assert (await c.job(pending.id)).status == "pending"
        [host] = await asyncio.to_thread(c.api.hosts)
        # liveness lives in memory: a restarted coordinator gives every host one full lease before judging it
        assert (host.status, host.last_seen is not None) == ("ready", True)  # when it was last there
        await asyncio.sleep(1.2)
        [host] = await asyncio.to_thread(c.api.hosts)
        assert host.status == "unreachable"
