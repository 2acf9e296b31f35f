"""Container jobs of two projects on one host cannot reach each other: each has its own pid namespace and
its own `/workflow`, no capability beyond Docker's default set less NET_RAW (on the host's network it would
capture the host's traffic, other jobs' included), and `no-new-privileges`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent.config import DockerConfig
from cli.api import Api
from cli.config import CliConfig
from shared.spec import parse_spec
from shared.wire import JobView, UserCreate
from tests.docker_engine import Engine
from tests.harness import Cluster, cluster

# Docker's default capabilities, by number (linux/capability.h): what a container gets, never more.
DEFAULT_CAPS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "SYS_CHROOT": 18,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}
SECRET = "s3cret-of-alpha"
CONTENT = "alphas-private-bytes"


async def member_of(c: Cluster, project: str) -> Api:
    await asyncio.to_thread(c.api.create_project, project)
    user = await asyncio.to_thread(c.api.create_user, UserCreate(name=f"{project}-dev", project=project))
    return Api(CliConfig(c.coordinator.url, user.token, c.coordinator.pki.ca_cert))


async def submit(api: Api, yaml_text: str) -> JobView:
    return await asyncio.to_thread(api.submit, parse_spec(yaml_text))


async def wait_for_file(path: Path, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if path.exists():
                return
            await asyncio.sleep(0.05)


def commands(*lines: str) -> str:
    """The YAML of a `commands` list, each line a JSON string (also YAML): no quoting to get wrong."""
    return "commands:\n" + "".join(f"  - {json.dumps(line)}\n" for line in lines)


def victim_script() -> str:
    return f"env: [A_SECRET={SECRET}]\n" + commands(
        f"echo {CONTENT} > /workflow/a-marker",
        "echo pidns=$(readlink /proc/self/ns/pid)",
        "sleep 10",
        "echo A finished",
    )


def intruder_script(pid: int) -> str:
    """What B tries, each line printing `... LEAK` where it succeeds. B's own script text must not hold
    what the assertions look for (A's secret, its file's content), as B's `ps` would show it."""
    return commands(
        "echo pidns=$(readlink /proc/self/ns/pid)",
        "echo \"ps: $(ps -o comm | tr '\\n' ' ')\"",
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep '^A_SECRET=' || echo environ clean",
        f"test -e /proc/{pid} && echo proc LEAK || echo proc refused",
        f"cat /proc/{pid}/root/workflow/a-marker || echo root refused",
        "cat /workflow/a-marker || echo workflow is its own",
        "find / -path /proc -prune -o -path /sys -prune -o -name a-marker -exec cat {} + || true",
        f"kill -9 {pid} && echo kill LEAK || echo kill refused",
        "grep -E '^(NoNewPrivs|CapEff):' /proc/self/status",
    )


async def test_a_container_job_cannot_see_read_or_kill_another_projects_container(
    docker_engine: Engine,
) -> None:
    async with cluster() as c:
        config = c.start_agent(
            "dock-iso",
            "2xH100:80GB",
            simulate_cpus=2,
            simulate_memory_mib=512,
            docker=DockerConfig(socket=docker_engine.socket),
        )
        alpha, beta = await member_of(c, "alpha"), await member_of(c, "beta")
        a = await submit(alpha, f"image: {docker_engine.image}\n{victim_script()}")
        running = await c.wait_for(a.id, "running")
        await wait_for_file(config.state_dir / "allocs" / str(running.allocation_id) / "work" / "a-marker")
        (container,) = docker_engine.client.api.containers(filters={"label": f"gpuctl.job={a.id}"})
        pid = docker_engine.client.api.inspect_container(container["Id"])["State"]["Pid"]
        assert SECRET in Path(f"/proc/{pid}/environ").read_text()  # the pid is A's, as the host sees it

        b = await submit(beta, f"image: {docker_engine.image}\n{intruder_script(pid)}")
        assert (await c.wait_for(b.id, "done", "failed")).status == "done", await c.full_log(b.id)
        log = (await c.full_log(b.id)).decode()
        for leaked in (SECRET, CONTENT, "LEAK"):
            assert leaked not in log, log
        for refused in (
            "environ clean",
            "proc refused",
            "root refused",
            "workflow is its own",
            "kill refused",
        ):
            assert refused in log, log
        ps = next(line for line in log.splitlines() if line.startswith("ps: ")).split()[1:]
        assert "sleep" not in ps and "sh" in ps, log  # its own processes only
        status = dict(
            line.split(":\t") for line in log.splitlines() if line.startswith(("NoNewPrivs", "CapEff"))
        )
        assert status["NoNewPrivs"] == "1", log
        granted = {name for name, bit in DEFAULT_CAPS.items() if int(status["CapEff"], 16) & 1 << bit}
        assert granted == DEFAULT_CAPS.keys() - {"NET_RAW"}, log
        assert int(status["CapEff"], 16) == sum(1 << DEFAULT_CAPS[name] for name in granted), log

        a_log = (await c.full_log(a.id)).decode()
        assert (await c.job(a.id)).status == "done" and "A finished" in a_log, a_log
        pidns = {line for line in (log + a_log).splitlines() if line.startswith("pidns=")}
        assert len(pidns) == 2, pidns  # two namespaces, neither the other's
