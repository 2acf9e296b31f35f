"""What a container needs to see exactly the GPUs of its blocks: a device-plugin-like hook that returns
data (device requests, device nodes, groups, environment) and leaves applying it to the runtime.

NVIDIA GPUs go through the NVIDIA container toolkit as a device request by UUID; AMD GPUs are `/dev/kfd`
plus the render nodes of exactly the job's GPUs, with their groups; Gaudi goes through
`HABANA_VISIBLE_DEVICES`, which Habana's container runtime reads. Simulated GPUs have no devices at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.wire import AllocationSpec, GpuDevice, Inventory


class DeviceError(RuntimeError):
    """One line: which GPU could not be given to the container, and why."""


@dataclass(frozen=True)
class DeviceGrant:
    nvidia_uuids: tuple[str, ...] = ()  # one DeviceRequest(driver="nvidia", capabilities=[["gpu"]])
    device_nodes: tuple[str, ...] = ()  # host device paths, mapped to the same path, rwm
    group_ids: tuple[int, ...] = ()  # numeric, so they need not exist in the image's /etc/group
    env: dict[str, str] = field(default_factory=dict)


def render_node(pci_bus_id: str, sysfs: Path = Path("/sys/bus/pci/devices")) -> str:
    """`/dev/dri/renderD128` for the GPU at `pci_bus_id`, from sysfs. Raises DeviceError."""
    drm = sysfs / pci_bus_id.lower() / "drm"
    try:
        nodes = sorted(p.name for p in drm.iterdir() if p.name.startswith("renderD"))
    except OSError as exc:
        raise DeviceError(f"no render node for the GPU at {pci_bus_id}: {exc.strerror or exc}") from None
    if not nodes:
        raise DeviceError(f"no render node for the GPU at {pci_bus_id} under {drm}")
    return f"/dev/dri/{nodes[0]}"


def device_group(path: str) -> int:
    """The group that owns a device node (video or render): the container joins it to open the node."""
    return os.stat(path).st_gid


def gpu_grant(
    alloc: AllocationSpec,
    inventory: Inventory,
    find_render_node: Callable[[str], str] = render_node,
    group_of: Callable[[str], int] = device_group,
) -> DeviceGrant:
    """The devices, groups and visibility variables for the allocation's GPUs. Raises DeviceError.

    Inside the container a vendor runtime numbers the granted GPUs from 0, so CUDA_VISIBLE_DEVICES and
    ROCR_VISIBLE_DEVICES become 0..n-1 there (the host indices would hide them all)."""
    by_index = {g.index: g for g in inventory.gpus}
    mine = [by_index[i] for i in alloc.gpus if i in by_index and not by_index[i].simulated]
    nvidia = [g for g in mine if g.vendor == "nvidia"]
    amd = [g for g in mine if g.vendor == "amd"]
    env: dict[str, str] = {}
    if nvidia:
        env["CUDA_VISIBLE_DEVICES"] = _renumbered(nvidia)
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in nvidia)
    elif any(g.vendor == "nvidia" and not g.simulated for g in inventory.gpus):
        # CUDA images say NVIDIA_VISIBLE_DEVICES=all: where nvidia is the default runtime, that would hand
        # every GPU of the host to a job that has none.
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    nodes: list[str] = []
    if amd:
        nodes = ["/dev/kfd"] + [find_render_node(g.pci_bus_id) for g in amd]
        env["ROCR_VISIBLE_DEVICES"] = _renumbered(amd)
    missing = [g.index for g in nvidia if not g.uuid]
    if missing:
        raise DeviceError(f"GPU {missing[0]} has no UUID; the NVIDIA runtime selects GPUs by UUID")
    return DeviceGrant(
        nvidia_uuids=tuple(g.uuid for g in nvidia),
        device_nodes=tuple(nodes),
        group_ids=tuple(sorted({group_of(n) for n in nodes})),
        env=env,
    )


def _renumbered(gpus: list[GpuDevice]) -> str:
    return ",".join(str(n) for n in range(len(gpus)))
