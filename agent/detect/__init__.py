"""Detect what this host has (accelerators, CPU cores, memory, disk) and cut it into blocks.

`detect_inventory` is the one entry point; the vendor detectors and the simulator sit behind it.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.blocks import make_blocks
from agent.detect.amd import detect_amd
from agent.detect.gaudi import Runner, detect_gaudi
from agent.detect.host import HostFacts, detect_host, simulated_topology
from agent.detect.metrics import read_metrics
from agent.detect.nvidia import detect_nvidia
from agent.detect.result import DetectResult
from agent.detect.simulate import parse_simulated_gpus
from agent.detect.sysfs import SYSFS_ROOT
from shared.wire import Block, Inventory

__all__ = ["DetectResult", "HostFacts", "detect_inventory", "read_metrics"]

log = logging.getLogger(__name__)

SIMULATED_CPUS_PER_GPU = 8
SIMULATED_MEMORY_MIB_PER_GPU = 128 * 1024


def detect_inventory(
    *,
    state_dir: str,
    blocks: str | int,
    simulate: str | None,
    simulate_cpus: int | None = None,
    simulate_memory_mib: int | None = None,
    runtimes: tuple[str, ...] = ("process",),
    nvml: Any = None,
    amdsmi: Any = None,
    hl_smi: Runner | None = None,
    sysfs_root: str = SYSFS_ROOT,
) -> Inventory:
    """The host's inventory, cut into blocks.

    With `simulate` the GPUs come from that spec alone (no vendor library or tool is consulted) and the
    CPU ids and memory are declared: `simulate_cpus` ids (default 8 per GPU) on two NUMA nodes,
    `simulate_memory_mib` (default 128 GiB per GPU); hostname and disk stay real. Otherwise NVIDIA (NVML),
    AMD (amdsmi) and Intel Gaudi (hl-smi) are detected on the real host, with sysfs under `sysfs_root`.
    Detector warnings go to `Inventory.warnings` and are logged at WARNING; info lines are logged at INFO
    only. Raises BlocksError when `blocks` cannot cut this host, ValueError on a bad `simulate` spec.
    Safe to call again (re-detection); not concurrently with itself.
    """
    real = detect_host(state_dir, sysfs_root)
    if simulate is not None:
        gpus = parse_simulated_gpus(simulate)
        host = _simulated_host(real, len(gpus), simulate_cpus, simulate_memory_mib)
        found = DetectResult(gpus=gpus, info=(f"simulated host: {simulate} ({len(gpus)} GPUs)",))
    else:
        host = real
        found = _detect_gpus(nvml, amdsmi, hl_smi, sysfs_root)
    cut = make_blocks(found.gpus, host.cpus, host.memory_mib, host.disk_mib, blocks, host.topology)
    warnings = found.warnings + _idle_cpu_warnings(host.cpus, cut)
    for line in found.info:
        log.info("%s", line)
    for line in warnings:
        log.warning("%s", line)
    return Inventory(
        hostname=host.hostname,
        cpu_count=len(host.cpus),
        memory_mib=host.memory_mib,
        disk_mib=host.disk_mib,
        gpus=found.gpus,
        blocks=cut,
        runtimes=runtimes,
        simulated=simulate is not None,
        warnings=warnings,
    )


def _simulated_host(real: HostFacts, gpu_count: int, cpus: int | None, memory_mib: int | None) -> HostFacts:
    """A declared host: CPU ids 0..n-1 and declared memory; the real hostname and disk."""
    cpu_count = cpus if cpus is not None else SIMULATED_CPUS_PER_GPU * gpu_count
    if cpu_count < 1:
        raise ValueError(f"simulate: CPU count must be at least 1, got {cpu_count}")
    return HostFacts(
        hostname=real.hostname,
        cpus=tuple(range(cpu_count)),
        memory_mib=memory_mib if memory_mib is not None else SIMULATED_MEMORY_MIB_PER_GPU * gpu_count,
        disk_mib=real.disk_mib,
        topology=simulated_topology(cpu_count),
    )


def _detect_gpus(nvml: Any, amdsmi: Any, hl_smi: Runner | None, sysfs_root: str) -> DetectResult:
    """Every vendor's accelerators. A host with more than one vendor's is not supported yet: the first
    vendor with devices (NVIDIA, then AMD, then Intel Gaudi) is kept and the others are left out, loudly,
    because their indices would collide in the blocks. Integrated GPUs never count (the AMD detector drops
    them), so an APU's Radeon graphics does not hide an NVIDIA card."""
    found = [
        ("NVIDIA", detect_nvidia(nvml, sysfs_root=sysfs_root)),
        ("AMD", detect_amd(amdsmi, sysfs_root=sysfs_root)),
        ("Intel Gaudi", detect_gaudi(hl_smi, sysfs_root=sysfs_root)),
    ]
    warnings = tuple(w for _, result in found for w in result.warnings)
    info = tuple(line for _, result in found for line in result.info)
    with_devices = [(vendor, result) for vendor, result in found if result.gpus]
    if not with_devices:
        return DetectResult(warnings=warnings, info=info)
    kept_vendor, kept = with_devices[0]
    for vendor, result in with_devices[1:]:
        warnings += (
            f"{vendor}: {len(result.gpus)} GPUs left out: hosts with both {kept_vendor} and {vendor} "
            "accelerators are not supported yet",
        )
    return DetectResult(gpus=kept.gpus, warnings=warnings, info=info)


def _idle_cpu_warnings(cpus: tuple[int, ...], cut: tuple[Block, ...]) -> tuple[str, ...]:
    """A warning when the blocks leave CPU cores unused (`auto` on a GPU host whose cores don't divide), or
    share them (`auto` on a host with fewer cores than GPUs)."""
    used = sum(len(block.cpus) for block in cut)
    if used == len(cpus):
        return ()
    if used > len(cpus):
        return (
            f"blocks: this host has {len(cpus)} CPU cores for {len(cut)} GPUs, so its {len(cut)} blocks "
            "share cores (one each); jobs on different blocks may compete for the same core",
        )
    return (
        f"blocks: {len(cpus) - used} of {len(cpus)} CPU cores belong to no block, because "
        f"{len(cut)} blocks do not divide them; set blocks to a divisor of both counts to use them all",
    )
