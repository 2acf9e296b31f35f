"""How a host's accelerators are connected, as plain data: NVLink / XGMI islands, PCIe roots, NUMA nodes.

The agent uses it to cut blocks whose GPUs stay together, the scheduler to place a job's GPUs close
together, the CLI to draw the matrix that `nvidia-smi topo -m` users know. Pure functions.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from enum import IntEnum
from typing import TypeVar

from shared.wire import GpuDevice

T = TypeVar("T", bound=Hashable)


class Affinity(IntEnum):
    """How close two devices are, best first."""

    LINK = 0  # NVLink or XGMI between them, directly or through an NVSwitch
    PCIE_ROOT = 1  # the same PCIe host bridge (nvidia-smi's PIX, PXB or PHB)
    NUMA = 2  # the same NUMA node through different host bridges (NODE)
    SYSTEM = 3  # across NUMA nodes, or not known (SYS)


_WORDS = {Affinity.PCIE_ROOT: "PHB", Affinity.NUMA: "NODE", Affinity.SYSTEM: "SYS"}
_LINK_WORDS = {"nvidia": "NV", "amd": "XGMI"}


def islands(gpus: Iterable[GpuDevice]) -> dict[int, int]:
    """Device index → the lowest device index of its island: the devices it reaches over NVLink / XGMI,
    directly or through one another. Devices without links are absent; links to devices that are not in
    `gpus` (a GPU skipped for MIG, say) are ignored. Links count in both directions."""
    present = {g.index for g in gpus}
    neighbours: dict[int, set[int]] = {}
    for g in gpus:
        for peer in g.links:
            if peer in present and peer != g.index:
                neighbours.setdefault(g.index, set()).add(peer)
                neighbours.setdefault(peer, set()).add(g.index)
    island_of: dict[int, int] = {}
    for start in sorted(neighbours):
        if start in island_of:
            continue
        todo, seen = [start], {start}
        while todo:
            for peer in neighbours[todo.pop()]:
                if peer not in seen:
                    seen.add(peer)
                    todo.append(peer)
        island_of.update((index, start) for index in seen)
    return island_of


def affinity(a: GpuDevice, b: GpuDevice) -> Affinity:
    """How two devices are connected: a direct link, else a shared PCIe root, else a shared NUMA node."""
    if b.index in a.links or a.index in b.links:
        return Affinity.LINK
    if a.pcie_root and a.pcie_root == b.pcie_root:
        return Affinity.PCIE_ROOT
    if a.numa_node is not None and a.numa_node == b.numa_node:
        return Affinity.NUMA
    return Affinity.SYSTEM


def relation_word(a: GpuDevice, b: GpuDevice) -> str:
    """The cell of a topology matrix: `X` on the diagonal, `NV` / `XGMI`, `PHB`, `NODE` or `SYS`."""
    if a.index == b.index:
        return "X"
    level = affinity(a, b)
    if level is Affinity.LINK:
        return _LINK_WORDS.get(a.vendor, "LINK")
    return _WORDS[level]


def common(values: Iterable[T | None]) -> T | None:
    """The one value that every item has; None when they differ, when one is None or "", or when empty."""
    found: T | None = None
    for value in values:
        if value is None or value == "" or (found is not None and value != found):
            return None
        found = value
    return found
