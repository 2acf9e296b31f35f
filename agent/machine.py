"""What the kernel is told about an allocation: its declared CPU ids and memory mapped onto this machine.

A simulated host declares cores and memory it does not have (8 cores and 128 GiB per simulated GPU), and the
scheduler reasons about those. Whatever reaches the kernel (a container's cpuset and memory limit, a plain
process's CPU affinity) must name what the machine really has, else the kernel refuses it. The rule:

- a declared CPU id that this machine has stays itself (so a real host's blocks are untouched);
- any other id `i` becomes `real[i % len(real)]`, and the result is deduplicated, so on a machine with fewer
  cores than declared, allocations share its cores;
- a memory limit is capped at the machine's memory (a larger one limits nothing and some engines refuse it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import psutil

from shared.wire import AllocationSpec

MIB = 1024 * 1024


@dataclass(frozen=True)
class Machine:
    """The CPU ids this process may run on (sorted) and the machine's memory."""

    cpus: tuple[int, ...]
    memory_mib: int


def this_machine() -> Machine:
    """The real machine, as the agent process sees it (its CPU affinity honours cgroups and taskset)."""
    return Machine(tuple(sorted(os.sched_getaffinity(0))), psutil.virtual_memory().total // MIB)


def kernel_cpus(declared: Sequence[int], real: Sequence[int]) -> tuple[int, ...]:
    """The real CPU ids that stand for `declared` ones, sorted and deduplicated (rule in the module
    docstring). Empty `declared` gives empty. Raises ValueError when `real` is empty. Pure."""
    if not real:
        raise ValueError("this machine has no usable CPU")
    ordered = sorted(real)
    have = set(ordered)
    return tuple(sorted({cpu if cpu in have else ordered[cpu % len(ordered)] for cpu in declared}))


def kernel_memory_mib(declared_mib: int, real_mib: int) -> int:
    """The memory limit to give the kernel: the declared one, capped at the machine's memory. Pure."""
    return min(declared_mib, real_mib)


def on_this_machine(alloc: AllocationSpec, machine: Machine) -> AllocationSpec:
    """The allocation with its CPU ids and memory as the kernel must see them on `machine`. Pure."""
    return msgspec.structs.replace(
        alloc,
        cpus=kernel_cpus(alloc.cpus, machine.cpus),
        memory_mib=kernel_memory_mib(alloc.memory_mib, machine.memory_mib),
    )
