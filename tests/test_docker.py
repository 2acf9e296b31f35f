"""The Docker runtime on a real engine (a private dockerd, see docker_engine), through the real coordinator:
output and exit codes, limits seen from inside the container, stop and max_duration, volumes, OOM, pulls."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import msgspec

from agent.agent import detect
from agent.config import AgentConfig, DockerConfig
from agent.env import job_env
from agent.runtime.container import LABEL_JOB, create_kwargs
from agent.runtime.devices import gpu_grant
from shared.spec import REDACTED, RegistryAuth, parse_spec
from shared.wire import AllocationSpec, GpuDevice, Inventory
from tests.docker_engine import Engine, busybox_rootfs, busybox_static
from tests.fake_registry import fake_registry, image_from_rootfs
from tests.harness import Cluster, cluster

MIB = 1024 * 1024


async def wait_for_host(c: Cluster, name: str, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if any(h.name == name and h.inventory for h in await asyncio.to_thread(c.api.hosts)):
                return
            await asyncio.sleep(0.1)


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
    return engine.client.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})


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
        assert lines[0] == f"job {job.id} {job.id} gpus= in /workflow"  # it asked for no GPU
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


STOPPABLE = "  - echo up\n  - sleep 300\n"
DEAF = "  - trap '' TERM\n  - echo up\n  - sleep 300\n"  # an ignored signal stays ignored in sleep too


async def wait_for_output(c: Cluster, job_id: str, text: bytes, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if text in (await asyncio.to_thread(c.api.logs, job_id, 0, False)).data:
                return
            await asyncio.sleep(0.1)


async def stopped_after_s(c: Cluster, job_id: str) -> float:
    """Stop the job once it runs (and printed `up`); how long it took to be stopped."""
    await wait_for_output(c, job_id, b"up\n")
    started = time.monotonic()
    await asyncio.to_thread(c.api.stop, job_id)
    await c.wait_for(job_id, "stopped", timeout_s=30)
    return time.monotonic() - started


async def test_stop_sends_sigterm_then_sigkill_after_the_jobs_stop_duration(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-c")
        start_docker_agent(c, docker_engine, "dock-d")
        head = f"image: {docker_engine.image}\n"
        polite = await c.submit(head + "stop_duration: 30s\ncommands:\n" + STOPPABLE)
        deaf = await c.submit(head + "stop_duration: 1s\ncommands:\n" + DEAF)
        polite_s, deaf_s = await asyncio.gather(stopped_after_s(c, polite.id), stopped_after_s(c, deaf.id))
        assert polite_s < 10, "SIGTERM should have ended it long before its 30 s grace"
        assert (await c.job(polite.id)).exit_code == 128 + 15
        assert 1 <= deaf_s < 10, "SIGKILL should have come 1 s (its stop_duration) after SIGTERM"
        assert (await c.job(deaf.id)).exit_code == 128 + 9


async def test_max_duration_is_enforced_by_the_agent(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-e")
        started = time.monotonic()
        job = await c.submit(
            f"image: {docker_engine.image}\nmax_duration: 2s\nstop_duration: 1s\ncommands:\n" + DEAF
        )
        final = await c.wait_for(job.id, "stopped", timeout_s=30)
        assert 2 <= time.monotonic() - started < 15
        assert final.reason == "max_duration of 2 s exceeded"
        assert (await c.full_log(job.id)) == b"up\n"


async def test_an_oom_killed_container_fails_with_out_of_memory(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-f", memory="64MB")
        job = await c.submit(
            f"image: {docker_engine.image}\ncommands:\n"
            "  - echo before\n"
            "  - dd if=/dev/zero of=/dev/null bs=256M count=1\n"  # a 256 MiB buffer in a 64 MiB container
            "  - echo never\n"
        )
        final = await c.wait_for(job.id, "failed", timeout_s=30)
        assert (final.reason, final.exit_code) == ("out of memory", 128 + 9)
        assert (await c.full_log(job.id)).startswith(b"before\n")


async def test_volumes_mount_only_under_the_hosts_prefixes(docker_engine: Engine) -> None:
    async with cluster() as c:
        allowed = c.root / "datasets"
        allowed.mkdir()
        start_docker_agent(c, docker_engine, "dock-g", volume_prefixes=(str(allowed),))
        await wait_for_host(c, "dock-g")
        head = f"image: {docker_engine.image}\n"
        refused = await c.submit(head + "volumes: [/etc:/host-etc]\ncommands: [cat /host-etc/hostname]\n")
        assert refused.status == "pending"
        assert "dock-g cannot mount /etc:/host-etc: /etc is not under an allowed prefix" in refused.reason
        mounted = await c.submit(head + f"volumes: [{allowed}/run1:/data]\ncommands: [echo hi > /data/out]\n")
        assert (await c.wait_for(mounted.id, "done", "failed")).status == "done"
        assert (allowed / "run1" / "out").read_text() == "hi\n"
        assert (await c.job(refused.id)).status == "pending"
        assert not containers_of(docker_engine, refused.id), "a refused job must never get a container"


async def test_an_image_that_cannot_be_pulled_fails_with_the_reason(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-h", registry_mirror="127.0.0.1:9")  # nothing listens
        job = await c.submit("image: gpuctl-test/absent:1\ncommands: [true]\n")
        final = await c.wait_for(job.id, "failed", timeout_s=60)
        assert final.reason.startswith("cannot pull image 127.0.0.1:9/gpuctl-test/absent:1: "), final.reason
        assert "\n" not in final.reason


def test_the_engine_records_the_nvidia_device_request_and_limits(
    docker_engine: Engine, tmp_path: Path
) -> None:
    """This engine has no NVIDIA runtime, so starting would fail ("could not select device driver"): the
    container is created the way the runtime creates it, and checked in its inspect data, not started."""
    gpus = tuple(GpuDevice(i, "nvidia", "H100", 81559, uuid=f"GPU-{i}-uuid") for i in range(4))
    inventory = Inventory("h", 8, 65536, 100000, gpus, ())
    task = parse_spec(
        f"image: {docker_engine.image}\nresources: {{gpu: 2, shm_size: 1GB}}\ncommands: [nvidia-smi]"
    )
    spec = AllocationSpec("a-inspect", "j-inspect", "job", "run", task, (1,), (2, 3), (0,), 512)
    grant = gpu_grant(spec, inventory)
    env = job_env(spec, inventory, str(tmp_path))
    kwargs = create_kwargs(spec, env, grant, docker_engine.image, "h", tmp_path, 100)
    container = docker_engine.client.containers.create(**kwargs)
    try:
        config = docker_engine.client.api.inspect_container(container.id)
    finally:
        container.remove(force=True)
    host = config["HostConfig"]
    assert host["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["GPU-2-uuid", "GPU-3-uuid"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert (host["CpusetCpus"], host["Memory"], host["MemorySwap"]) == ("0", 512 * MIB, 512 * MIB)
    assert (host["ShmSize"], host["PidsLimit"], host["Privileged"]) == (1024 * MIB, 100, False)
    assert (host["NetworkMode"], host["Init"], host["LogConfig"]["Type"]) == ("host", True, "json-file")
    env_inside = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert env_inside["CUDA_VISIBLE_DEVICES"] == "0,1"  # the two granted GPUs, as the container numbers them
    assert env_inside["NVIDIA_VISIBLE_DEVICES"] == "GPU-2-uuid,GPU-3-uuid"
    assert config["Config"]["Labels"]["gpuctl.allocation"] == "a-inspect"


async def test_an_absent_image_is_pulled_through_the_mirror_with_progress_in_the_jobs_status(
    docker_engine: Engine,
) -> None:
    image = image_from_rootfs(busybox_rootfs(busybox_static()))
    async with cluster() as c:
        with fake_registry(image, "puller", "s3cret", layer_seconds=3.0) as mirror:
            auth = {"registry_username": "puller", "registry_password": "s3cret"}
            start_docker_agent(c, docker_engine, "dock-p", registry_mirror=mirror, **auth)
            job = await c.submit("image: team/tool:7\ncommands: ['echo pulled and ran']\n")
            seen = await statuses_until_done(c, job.id)
            assert seen[-1] == ("done", ""), seen
            pulling = [r for s, r in seen if s == "pulling" and re.fullmatch(r"pulling \d+%", r)]
            percents = [int(r.split()[1].rstrip("%")) for r in pulling]
            assert percents and percents == sorted(percents) and percents[0] < 100, seen
            assert await c.full_log(job.id) == b"pulled and ran\n"
        # The mirror is gone: the image is on the host now, so the next job does not pull (if-not-present).
        again = await c.submit("image: team/tool:7\ncommands: ['echo again']\n")
        assert (await statuses_until_done(c, again.id))[-1] == ("done", "")
    docker_engine.client.images.remove(f"{mirror}/team/tool:7", force=True)


async def test_a_jobs_own_registry_auth_pulls_its_image_and_no_view_shows_the_password(
    docker_engine: Engine,
) -> None:
    image = image_from_rootfs(busybox_rootfs(busybox_static()))
    async with cluster() as c:
        with fake_registry(image, "puller", "s3cret", layer_seconds=0.0) as mirror:
            start_docker_agent(c, docker_engine, "dock-r", registry_mirror=mirror)  # it has no credentials
            anonymous = await c.submit("image: team/private:1\ncommands: [true]\n")
            failed = await c.wait_for(anonymous.id, "failed", timeout_s=60)
            assert failed.reason.startswith(f"cannot pull image {mirror}/team/private:1: "), failed.reason
            job = await c.submit(
                "image: team/private:1\ncommands: ['echo with my key', 'sleep 1']\nenv: [KEY=s3cret]\n"
                "registry_auth: {username: puller, password: '${{ env.KEY }}'}\n"
            )
            running = await c.wait_for(job.id, "running", timeout_s=60)
            assert running.allocation_id is not None
            journal = c.root / "dock-r" / "allocs" / running.allocation_id
            modes = {name: (journal / name).stat().st_mode & 0o777 for name in ("alloc.json", "launch.json")}
            assert modes == {"alloc.json": 0o600, "launch.json": 0o600}  # they hold the password and the env
            assert (await statuses_until_done(c, job.id))[-1] == ("done", "")
            assert await c.full_log(job.id) == b"with my key\n"
            view = await c.job(job.id)
            assert view.spec.registry_auth == RegistryAuth("puller", REDACTED)
            listed = await asyncio.to_thread(c.api.jobs, True)
            assert b'"password":"s3cret"' not in msgspec.json.encode([view, *listed])
    docker_engine.client.images.remove(f"{mirror}/team/private:1", force=True)


async def statuses_until_done(c: Cluster, job_id: str) -> list[tuple[str, str]]:
    """Every (status, reason) the job showed, polled as `gpuctl ps` would, until it ended."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(60):
        while not seen or seen[-1][0] not in ("done", "failed", "stopped"):
            view = await c.job(job_id)
            if not seen or seen[-1] != (view.status, view.reason):
                seen.append((view.status, view.reason))
            await asyncio.sleep(0.05)
    return seen


async def test_an_image_archive_dropped_on_the_host_runs_without_any_registry(docker_engine: Engine) -> None:
    client = docker_engine.client
    client.images.get(docker_engine.image).tag("gpuctl-test/dropped", "2")
    archive = b"".join(client.api.get_image("gpuctl-test/dropped:2"))  # what `docker save` writes
    client.images.remove("gpuctl-test/dropped:2")
    async with cluster() as c:
        drop = c.root / "dock-i" / "images"
        drop.mkdir(parents=True)
        (drop / "dropped.tar").write_bytes(archive)
        start_docker_agent(c, docker_engine, "dock-i")  # no mirror: a pull could only fail
        job = await c.submit("image: gpuctl-test/dropped:2\ncommands: ['echo from the archive']\n")
        assert (await statuses_until_done(c, job.id))[-1] == ("done", "")
        assert await c.full_log(job.id) == b"from the archive\n"
        missing = await c.submit("image: gpuctl-test/nowhere:1\ncommands: [true]\n")
        failed = await c.wait_for(missing.id, "failed", timeout_s=60)
        assert failed.reason.startswith("cannot pull image gpuctl-test/nowhere:1: ")
        assert failed.reason.endswith("drop its archive into the agent's docker.image_dir)")
    client.images.remove("gpuctl-test/dropped:2")


def test_a_host_advertises_docker_only_when_the_engine_answers(docker_engine: Engine, tmp_path: Path) -> None:
    def inventory(socket: str) -> Inventory:
        config = AgentConfig(
            coordinator="-", state_dir=tmp_path, name="h", simulate="1xL4", docker=DockerConfig(socket)
        )
        return detect(config)

    assert inventory(docker_engine.socket).runtimes == ("process", "docker")
    missing = inventory(f"unix://{tmp_path}/nothing.sock")
    assert missing.runtimes == ("process",)
    assert missing.warnings == (
        f"Docker engine at unix://{tmp_path}/nothing.sock: [Errno 2] No such file or directory; "
        "jobs with an image are not placed here",
    )
