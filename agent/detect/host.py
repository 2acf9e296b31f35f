"""Facts about the host itself: name, the CPU cores this process may use, memory and disk."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    cpus: tuple[int, ...]  # CPU ids this process may run on, sorted
    memory_mib: int
    disk_mib: int  # size of the filesystem holding the agent's state directory


def detect_host(state_dir: str) -> HostFacts:
    """Read the real host's facts. CPU ids honour this process's affinity (cgroups, taskset).

    Raises OSError when `state_dir` does not exist. Read-only; safe to call any time.
    """
    return HostFacts(
        hostname=socket.gethostname(),
        cpus=tuple(sorted(os.sched_getaffinity(0))),
        memory_mib=psutil.virtual_memory().total // MIB,
        disk_mib=psutil.disk_usage(state_dir).total // MIB,
    )
