"""Facts about the host itself: name, the CPU cores this process may use and where they sit, memory, disk."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import psutil

from agent.blocks import CpuTopology
from agent.detect.sysfs import SYSFS_ROOT, read_cpu_cores, read_cpu_numa

MIB = 1024 * 1024


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    cpus: tuple[int, ...]  # CPU ids this process may run on, sorted
    memory_mib: int
    disk_mib: int  # size of the filesystem holding the agent's state directory
    topology: CpuTopology = field(default_factory=CpuTopology)  # NUMA node and core of each CPU id


def detect_host(state_dir: str, sysfs_root: str = SYSFS_ROOT) -> HostFacts:
    """Read the real host's facts. CPU ids honour this process's affinity (cgroups, taskset); their NUMA
    nodes and hyperthread siblings come from sysfs under `sysfs_root`.

    Raises OSError when `state_dir` does not exist. Read-only; safe to call any time.
    """
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    return HostFacts(
        hostname=socket.gethostname(),
        cpus=cpus,
        memory_mib=psutil.virtual_memory().total // MIB,
        disk_mib=psutil.disk_usage(state_dir).total // MIB,
        topology=read_cpu_topology(cpus, sysfs_root),
    )


def read_cpu_topology(cpus: tuple[int, ...], sysfs_root: str = SYSFS_ROOT) -> CpuTopology:
    """The NUMA node and physical core of each of `cpus`, as far as sysfs tells."""
    numa_of = read_cpu_numa(sysfs_root)
    return CpuTopology(
        numa_of={c: numa_of[c] for c in cpus if c in numa_of},
        core_of=read_cpu_cores(cpus, sysfs_root),
    )


def simulated_topology(cpu_count: int, numa_nodes: int = 2) -> CpuTopology:
    """Declared CPU ids 0..n-1 split into `numa_nodes` equal halves, the way simulated GPUs are (first half
    of each on node 0), so simulated blocks are NUMA-local too. One node when there are too few CPUs."""
    nodes = numa_nodes if cpu_count >= numa_nodes else 1
    return CpuTopology(numa_of={cpu: cpu * nodes // cpu_count for cpu in range(cpu_count)})
