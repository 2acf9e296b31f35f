"""A job that asks for no GPU sees none, in both runtimes: its placement carries no GPU, its environment
hides every vendor's devices, and its container gets no device request and no device node."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DockerConfig
from agent.env import job_env
from agent.runtime.container import create_kwargs
from agent.runtime.devices import gpu_grant
from shared.spec import parse_spec
from shared.wire import AllocationSpec, GpuDevice, Inventory
from tests.docker_engine import Engine
from tests.harness import cluster

PRINT_GPU_ENV = "commands:\n  - env | grep -E '^(CUDA|NVIDIA|ROCR|HABANA)_VISIBLE_DEVICES=|^GPUCTL_GPUS'\n"


def _env_of(log: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in log.splitlines() if "=" in line)


async def test_a_plain_job_without_a_gpu_on_a_gpu_host_sees_none() -> None:
    async with cluster() as c:
        c.start_agent("gpu-host", "2xH100:80GB")
        job = await c.submit(PRINT_GPU_ENV)
        log = (await c.full_log(job.id)).decode()
        final = await c.job(job.id)
        assert final.status == "done", (final.reason, log)
        assert (final.gpus, len(final.blocks)) == ((), 1)  # it holds a block, for its cores and memory
        env = _env_of(log)
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["NVIDIA_VISIBLE_DEVICES"] == "void", log
        assert env["GPUCTL_GPUS_PER_NODE"] == env["GPUCTL_GPUS_NUM"] == "0", log


async def test_a_container_without_a_gpu_on_a_gpu_host_sees_none(docker_engine: Engine) -> None:
    async with cluster() as c:
        c.start_agent(
            "gpu-dock", "2xH100:80GB", simulate_cpus=2, docker=DockerConfig(socket=docker_engine.socket)
        )
        job = await c.submit(f"image: {docker_engine.image}\n" + PRINT_GPU_ENV)
        log = (await c.full_log(job.id)).decode()
        final = await c.job(job.id)
        assert final.status == "done", (final.reason, log)
        env = _env_of(log)
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["NVIDIA_VISIBLE_DEVICES"] == "void", log


NVIDIA = tuple(GpuDevice(i, "nvidia", "H100", 81559, uuid=f"GPU-{i}") for i in range(2))
AMD = tuple(GpuDevice(i, "amd", "MI300X", 196592, pci_bus_id=f"0000:0{i}:00.0") for i in range(2))
GAUDI = tuple(GpuDevice(i, "intel", "Gaudi2", 98304) for i in range(2))


@pytest.mark.parametrize(
    ("gpus", "hidden"),
    [
        (NVIDIA, {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}),
        (AMD, {"ROCR_VISIBLE_DEVICES": ""}),
        (GAUDI, {"HABANA_VISIBLE_DEVICES": ""}),
    ],
    ids=["nvidia", "amd", "gaudi"],
)
def test_no_vendor_gives_devices_to_an_allocation_without_gpus(
    gpus: tuple[GpuDevice, ...], hidden: dict[str, str]
) -> None:
    inventory = Inventory("h", 8, 65536, 100000, gpus, ())
    task = parse_spec("image: busybox\ncommands: [true]")
    alloc = AllocationSpec("a-1", "j-1", "job", "run", task, (0,), (), (2, 3), 4096)

    plain = job_env(alloc, inventory, "/w")
    grant = gpu_grant(alloc, inventory, lambda bdf: pytest.fail(f"asked for {bdf}'s render node"))
    kwargs = create_kwargs(alloc, plain, grant, "busybox", "h", Path("/w"), 100)

    assert hidden.items() <= plain.items()
    assert hidden.items() <= kwargs["environment"].items()
    assert not ({"device_requests", "devices", "group_add"} & kwargs.keys())
