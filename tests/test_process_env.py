"""What a plain-process job sees of its host: a clean environment (nothing of the agent's own) and only the
CPU cores of its blocks, through the real coordinator, agent and supervisor."""

from __future__ import annotations

import asyncio
import getpass
import os
import re

import pytest

from agent.detect.sysfs import parse_cpulist
from agent.env import DEFAULT_PATH
from agent.machine import kernel_cpus, this_machine
from agent.runtime.jobuser import DEFAULT_JOB_UID_RANGE, parse_uid_range
from tests.harness import cluster

PRINT_ENV = "commands:\n  - env\n  - grep Cpus_allowed_list /proc/self/status\n"


def _env_of(log: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in log.splitlines() if "=" in line)


async def test_a_plain_job_gets_a_clean_environment_and_its_blocks_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPUCTL_TEST_AGENT_ONLY", "agent-secret")
    monkeypatch.setenv("PATH", f"/root/.local/bin:{os.environ['PATH']}")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    async with cluster() as c:
        c.start_agent("clean", "2xH100:80GB", simulate_cpus=2)  # two blocks of one GPU and one core
        job = await c.submit(PRINT_ENV + "resources: {gpu: 1}\nenv: {MINE: job-value}\n")
        log = (await c.full_log(job.id)).decode()
        final = await c.job(job.id)
        assert final.status == "done", (final.reason, log)
        env = _env_of(log)
        assert "agent-secret" not in log
        assert env["PATH"] == DEFAULT_PATH
        assert env["LANG"] == "C.UTF-8"
        assert env["HOME"].endswith(f"/allocs/{final.allocation_id}/work")
        assert env["USER"] == env["LOGNAME"]
        if os.geteuid() == 0:  # a uid of the job range, which has no passwd entry: named by its number
            job_uids = parse_uid_range(DEFAULT_JOB_UID_RANGE)
            assert job_uids.first <= int(env["USER"]) <= job_uids.last
        else:
            assert env["USER"] == getpass.getuser()
        assert env["SHELL"] == "/bin/sh"
        assert env["MINE"] == "job-value"
        assert env["GPUCTL_JOB_ID"] == env["DSTACK_JOB_ID"] == job.id
        allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", log, re.M)
        assert allowed, log
        hosts = await asyncio.to_thread(c.api.hosts)
        inventory = next(h.inventory for h in hosts if h.name == "clean")
        assert inventory is not None
        declared = [cpu for b in final.blocks for cpu in inventory.blocks[b].cpus]
        assert set(parse_cpulist(allowed.group(1))) == set(kernel_cpus(declared, this_machine().cpus))
