"""Declared CPU ids and memory mapped onto the real machine: the pure rule, and a simulated 8xH100 host
running a container on this (smaller) machine through a real Docker engine."""

from __future__ import annotations

import asyncio
import re

import pytest

from agent.config import DockerConfig
from agent.detect.sysfs import parse_cpulist
from agent.machine import Machine, kernel_cpus, kernel_memory_mib, on_this_machine, this_machine
from shared.spec import parse_spec
from shared.wire import AllocationSpec
from tests.docker_engine import Engine
from tests.harness import cluster

MIB = 1024 * 1024


def test_ids_the_machine_has_stay_themselves() -> None:
    assert kernel_cpus((2, 3), (0, 1, 2, 3)) == (2, 3)
    assert kernel_cpus((5, 7), (5, 6, 7)) == (5, 7)


def test_declared_ids_beyond_the_machine_wrap_onto_its_cores_deduplicated() -> None:
    assert kernel_cpus(range(16), (0, 1)) == (0, 1)
    assert kernel_cpus((8, 9, 10), (0, 1)) == (0, 1)
    assert kernel_cpus((8,), (0, 1)) == (0,)
    assert kernel_cpus((17,), (0, 1)) == (1,)


def test_wrapping_uses_the_sorted_real_ids_not_their_values() -> None:
    assert kernel_cpus((5,), (12, 4)) == (12,)  # 5 % 2 = 1: the second real id, 12
    assert kernel_cpus((), (0, 1)) == ()


def test_no_real_cpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no usable CPU"):
        kernel_cpus((0,), ())


def test_memory_is_capped_at_the_machines() -> None:
    assert kernel_memory_mib(128 * 1024, 24 * 1024) == 24 * 1024
    assert kernel_memory_mib(192, 24 * 1024) == 192


def test_an_allocation_on_a_small_machine() -> None:
    alloc = AllocationSpec(
        id="a",
        job_id="j",
        job_name="n",
        desired="run",
        spec=parse_spec("commands: [true]"),
        blocks=(1,),
        gpus=(1,),
        cpus=tuple(range(8, 16)),
        memory_mib=128 * 1024,
    )
    mapped = on_this_machine(alloc, Machine((0, 1), 2048))
    assert (mapped.cpus, mapped.memory_mib, mapped.gpus) == ((0, 1), 2048, (1,))


def test_this_machine_is_what_the_process_may_use() -> None:
    machine = this_machine()
    assert machine.cpus and machine.memory_mib > 0


async def test_a_simulated_8xh100_host_runs_a_container_on_this_machine(docker_engine: Engine) -> None:
    async with cluster() as c:
        c.start_agent("sim-dock", "8xH100:80GB", docker=DockerConfig(socket=docker_engine.socket))
        job = await c.submit(
            f"image: {docker_engine.image}\n"
            "resources: {gpu: 2}\n"
            "commands:\n"
            "  - cd /sys/fs/cgroup\n"
            "  - echo cpus=$(cat cpuset/cpuset.cpus 2>/dev/null || cat cpuset.cpus.effective)\n"
            "  - echo memory=$(cat memory/memory.limit_in_bytes 2>/dev/null || cat memory.max)\n"
        )
        log = (await c.full_log(job.id)).decode()
        final = await c.job(job.id)
        assert final.status == "done", (final.reason, log)
        seen = dict(re.findall(r"^(\w+)=(\S+)$", log, re.M))
        machine = this_machine()
        # Two blocks declare 16 cores and 256 GiB; the kernel sees this machine's cores and memory.
        hosts = await asyncio.to_thread(c.api.hosts)
        inventory = next(h.inventory for h in hosts if h.name == "sim-dock")
        assert inventory is not None
        declared = [cpu for b in final.blocks for cpu in inventory.blocks[b].cpus]
        assert len(declared) == 16
        assert set(parse_cpulist(seen["cpus"])) == set(kernel_cpus(declared, machine.cpus)), log
        assert int(seen["memory"]) == min(256 * 1024, machine.memory_mib) * MIB, log
