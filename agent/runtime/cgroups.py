"""Each plain-process allocation's own cgroup, as Slurm's cgroup plugin makes them (ConstrainCores,
ConstrainRAMSpace, ConstrainDevices): its CPU cores, a hard memory limit without swap, a pids limit, and
on cgroup v1 a device allow-list holding only the allocation's own GPU device nodes.

v1: one folder per controller under `<mount>/<controller>/gpuctl/<alloc id>`; v2: one folder under
`<root>/gpuctl/<alloc id>` with the controllers enabled through cgroup.subtree_control (v2 fences devices
only with eBPF: `warnings()` says so). The supervisor joins every folder before it starts the job, so the
job and all its children are inside. What a host cannot enforce is a host warning, never silent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from agent.detect.sysfs import parse_cpulist
from shared.wire import AllocationSpec, Inventory

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "gpuctl"
V1_CONTROLLERS = ("cpuset", "memory", "pids", "devices")
# Docker's defaults: mknod of anything, and the basic character devices (null, zero, full, random,
# urandom, tty, console, ptmx, the pseudo-terminals).
BASIC_DEVICES = (
    "c *:* m",
    "b *:* m",
    *(f"c 1:{minor} rwm" for minor in (3, 5, 7, 8, 9)),
    *(f"c 5:{minor} rwm" for minor in (0, 1, 2)),
    "c 136:* rwm",
)
KILL_WAIT_S = 2.0


@dataclass(frozen=True)
class Limits:
    cpus: tuple[int, ...]
    memory_mib: int
    pids: int
    devices: tuple[str, ...]  # device node paths the job may open


def gpu_device_nodes(
    alloc: AllocationSpec, inventory: Inventory, dev: Path = Path("/dev")
) -> tuple[str, ...]:
    """The device nodes of the allocation's own GPUs (and their vendor's control nodes) that exist."""
    by_index = {g.index: g for g in inventory.gpus}
    mine = [by_index[i] for i in alloc.gpus if i in by_index and not by_index[i].simulated]
    nodes: list[Path] = []
    if any(g.vendor == "nvidia" for g in mine):
        nodes += [dev / "nvidiactl", dev / "nvidia-uvm", dev / "nvidia-uvm-tools"]
    if any(g.vendor == "amd" for g in mine):
        nodes.append(dev / "kfd")
    for g in mine:
        if g.vendor == "nvidia":
            nodes.append(dev / f"nvidia{g.index}")  # the NVML index is the device minor on ordinary hosts
        elif g.vendor == "amd" and g.render_node:
            nodes.append(dev / "dri" / Path(g.render_node).name)
        else:
            nodes.append(dev / "accel" / f"accel{g.index}")
    return tuple(str(n) for n in nodes if n.exists())


class Cgroups:
    """The host's cgroup hierarchy as the agent uses it. Methods raise OSError on kernel refusals."""

    def __init__(self, root: Path = CGROUP_ROOT, parent: str = PARENT) -> None:
        self.root = root
        self.parent = parent
        if (root / "cgroup.controllers").exists():
            self.version: str | None = "v2"
            self.controllers = tuple(
                c
                for c in (root / "cgroup.controllers").read_text().split()
                if c in ("cpuset", "memory", "pids")
            )
        elif any((root / c / "tasks").exists() for c in V1_CONTROLLERS):
            self.version = "v1"
            self.controllers = tuple(c for c in V1_CONTROLLERS if (root / c / "tasks").exists())
        else:
            self.version, self.controllers = None, ()

    def warnings(self) -> tuple[str, ...]:
        """What this host cannot enforce for plain-process jobs, one host warning each."""
        if self.version is None:
            return ("no cgroups mounted: plain-process jobs are not held to their cores, memory or GPUs",)
        wanted = V1_CONTROLLERS if self.version == "v1" else ("cpuset", "memory", "pids")
        out = [
            f"cgroup {self.version}: no {c} controller, so plain-process jobs are not limited by it"
            for c in wanted
            if c not in self.controllers
        ]
        if self.version == "v2":
            out.append("cgroup v2: GPU device nodes are not fenced per plain-process job (that needs eBPF)")
        return tuple(out)

    def _dirs(self, name: str) -> list[Path]:
        if self.version == "v2":
            return [self.root / self.parent / name]
        return [self.root / c / self.parent / name for c in self.controllers]

    def create(self, name: str, limits: Limits) -> list[Path]:
        """Make the allocation's cgroup(s) with its limits; the folders the supervisor must join.
        Idempotent."""
        if self.version == "v2":
            return [self._create_v2(name, limits)]
        return [self._create_v1(c, name, limits) for c in self.controllers]

    def _create_v1(self, controller: str, name: str, limits: Limits) -> Path:
        parent = self.root / controller / self.parent
        parent.mkdir(exist_ok=True)
        path = parent / name
        path.mkdir(exist_ok=True)
        if controller == "cpuset":
            for key in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty
                if not (parent / key).read_text().strip():
                    _write(parent / key, (parent.parent / key).read_text())
            _write(path / "cpuset.cpus", _cpus_within(limits.cpus, (parent / "cpuset.cpus").read_text()))
            _write(path / "cpuset.mems", (parent / "cpuset.mems").read_text())
        elif controller == "memory" and limits.memory_mib > 0:
            _write(path / "memory.limit_in_bytes", str(limits.memory_mib << 20))
            if (path / "memory.memsw.limit_in_bytes").exists():  # memory and swap together: no swap
                _write(path / "memory.memsw.limit_in_bytes", str(limits.memory_mib << 20))
        elif controller == "pids":
            _write(path / "pids.max", str(limits.pids))
        elif controller == "devices":
            _write(path / "devices.deny", "a")
            for rule in BASIC_DEVICES + tuple(_device_rule(node) for node in limits.devices):
                _write(path / "devices.allow", rule)
        return path

    def _create_v2(self, name: str, limits: Limits) -> Path:
        parent = self.root / self.parent
        parent.mkdir(exist_ok=True)
        enable = " ".join(f"+{c}" for c in self.controllers)
        for folder in (self.root, parent):
            with contextlib.suppress(OSError):  # the root's may be set already, or owned by systemd
                _write(folder / "cgroup.subtree_control", enable)
        path = parent / name
        path.mkdir(exist_ok=True)
        if "cpuset" in self.controllers:
            effective = (parent / "cpuset.cpus.effective").read_text()
            _write(path / "cpuset.cpus", _cpus_within(limits.cpus, effective))
        if "memory" in self.controllers and limits.memory_mib > 0:
            _write(path / "memory.max", str(limits.memory_mib << 20))
            _write(path / "memory.swap.max", "0")
        if "pids" in self.controllers:
            _write(path / "pids.max", str(limits.pids))
        return path

    def release(self, name: str) -> None:
        """Kill what is left in the allocation's cgroup (a job that left its process group), then remove
        it. Idempotent."""
        for path in self._dirs(name):
            deadline = time.monotonic() + KILL_WAIT_S
            while path.exists():
                for pid in _pids(path):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    path.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def confine(cgroups: Cgroups | None, name: str, limits: Limits) -> list[Path]:
    """Create the allocation's cgroups; the folders its supervisor must join (none: no cgroups here)."""
    return cgroups.create(name, limits) if cgroups is not None and cgroups.version else []


def _device_rule(node: str) -> str:
    st = os.stat(node)
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    return f"{kind} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} rwm"


def _cpus_within(cpus: tuple[int, ...], available: str) -> str:
    """The allocation's cores that this machine has; all it has where none is (a simulated host)."""
    have = set(parse_cpulist(available))
    mine = [c for c in cpus if c in have]
    return ",".join(str(c) for c in mine) if mine else available.strip()


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value.strip() or "\n")
