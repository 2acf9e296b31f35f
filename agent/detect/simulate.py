"""Simulated GPUs from a spec string such as `8xH100:80GB` or `2xH100:80GB,2xA100:40GB`.

A simulated host lets the whole system (scheduler, blocks, agent) run on a machine without accelerators.
Every device it produces says `simulated=True`; its live readings are made up too (`simulated_readings`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence

from shared.wire import GpuDevice, GpuMetrics

# Memory of well-known models, used when a spec omits it. The value is the marketed size in GiB.
KNOWN_MEMORY_GIB: dict[str, int] = {
    "H100": 80,
    "H200": 141,
    "H800": 80,
    "GH200": 96,
    "B200": 180,
    "A100": 80,
    "A800": 80,
    "A10G": 24,
    "A10": 24,
    "A40": 48,
    "L4": 24,
    "L40": 48,
    "L40S": 48,
    "T4": 16,
    "V100": 32,
    "RTX4090": 24,
    "RTXA6000": 48,
    "MI300X": 192,
    "MI325X": 256,
    "MI250X": 128,
    "MI250": 128,
    "MI210": 64,
    "MI100": 32,
    "GAUDI2": 96,
    "GAUDI3": 128,
}

# CUDA compute capability of well-known NVIDIA models, so simulated hosts answer `compute_capability` requests.
KNOWN_COMPUTE_CAPABILITY: dict[str, str] = {
    "H100": "9.0",
    "H200": "9.0",
    "H800": "9.0",
    "GH200": "9.0",
    "B200": "10.0",
    "A100": "8.0",
    "A800": "8.0",
    "A10G": "8.6",
    "A10": "8.6",
    "A40": "8.6",
    "RTXA6000": "8.6",
    "L4": "8.9",
    "L40": "8.9",
    "L40S": "8.9",
    "RTX4090": "8.9",
    "T4": "7.5",
    "V100": "7.0",
}

_GROUP = re.compile(r"(?P<count>\d+)[xX](?P<model>[A-Za-z][A-Za-z0-9_.-]*)(?::(?P<memory>.+))?")
_MEMORY = re.compile(r"(?P<amount>\d+)\s*(?P<unit>GB|GIB|G|MB|MIB|M|TB|TIB|T)", re.IGNORECASE)
_MIB_PER_UNIT = {"M": 1, "G": 1024, "T": 1024 * 1024}

# Buses per PCI domain that synthetic addresses use, so any device count gets distinct addresses.
_BUSES_PER_DOMAIN = 0xE0
SWING_PERIOD_S = 60.0  # how slowly a simulated reading moves between its low and its high


def parse_simulated_gpus(spec: str) -> tuple[GpuDevice, ...]:
    """Parse `COUNTxMODEL[:MEMORY][,COUNTxMODEL[:MEMORY]...]` into simulated devices, indexed 0..n-1.

    MEMORY is a number with a unit (`80GB`, `24576MB`; GB means GiB, as GPU vendors mean it); without it
    the model must be one of `KNOWN_MEMORY_GIB`. Devices are spread over two NUMA nodes, first half on
    node 0; well-known NVIDIA models get their compute capability. Raises `ValueError` with a one-line
    message on any malformed part. Pure.
    """
    groups = [_parse_group(part.strip()) for part in spec.split(",")]
    models = [(model, memory_mib) for count, model, memory_mib in groups for _ in range(count)]
    total = len(models)
    return tuple(
        _simulated_device(index, total, model, memory_mib) for index, (model, memory_mib) in enumerate(models)
    )


def _parse_group(part: str) -> tuple[int, str, int]:
    """`"8xH100:80GB"` → `(8, "H100", 81920)`; raises ValueError naming the bad part."""
    match = _GROUP.fullmatch(part)
    if match is None:
        raise ValueError(f"simulate: expected COUNTxMODEL[:MEMORY], got {part!r}")
    count = int(match["count"])
    if count < 1:
        raise ValueError(f"simulate: GPU count must be at least 1, got {part!r}")
    model = _canonical_model(match["model"])
    if match["memory"] is not None:
        return count, model, _parse_memory_mib(match["memory"], part)
    if model not in KNOWN_MEMORY_GIB:
        raise ValueError(f"simulate: unknown model {model!r} needs its memory, e.g. '{count}x{model}:80GB'")
    return count, model, KNOWN_MEMORY_GIB[model] * 1024


def _canonical_model(model: str) -> str:
    """A known model's canonical spelling (`h100` → `H100`); an unknown model as written."""
    upper = model.upper()
    return upper if upper in KNOWN_MEMORY_GIB else model


def _parse_memory_mib(text: str, part: str) -> int:
    """`"80GB"` → 81920, `"24576MB"` → 24576; raises ValueError naming `part`."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None or int(match["amount"]) < 1:
        raise ValueError(f"simulate: memory must look like 80GB or 24576MB, got {text!r} in {part!r}")
    return int(match["amount"]) * _MIB_PER_UNIT[match["unit"][0].upper()]


def vendor_of(model: str) -> str:
    """The vendor of a model name: `MI300X` → amd, `Gaudi2` → intel, anything else → nvidia."""
    upper = model.upper()
    if upper.startswith(("MI", "INSTINCT", "RADEON", "RX")):
        return "amd"
    if upper.startswith(("GAUDI", "HL-", "MAX")):
        return "intel"
    return "nvidia"


def _simulated_device(index: int, total: int, model: str, memory_mib: int) -> GpuDevice:
    vendor = vendor_of(model)
    if vendor == "nvidia":
        uuid = f"GPU-sim-00000000-0000-0000-0000-{index:012x}"
    else:
        uuid = f"sim-{vendor}-{index:016x}"
    domain, bus = divmod(index, _BUSES_PER_DOMAIN)
    return GpuDevice(
        index=index,
        vendor=vendor,
        name=model,
        memory_mib=memory_mib,
        uuid=uuid,
        pci_bus_id=f"{domain:08X}:{0x18 + bus:02X}:00.0",
        numa_node=index * 2 // total,
        simulated=True,
        compute_capability=KNOWN_COMPUTE_CAPABILITY.get(model, "") if vendor == "nvidia" else "",
    )


def simulated_readings(
    gpus: Sequence[GpuDevice], busy: Collection[int], now_s: float
) -> tuple[GpuMetrics, ...]:
    """Plausible readings of simulated devices at `now_s`, so a simulated job's GPUs show numbers: a GPU in
    `busy` (a running job holds it) works hard, the others idle; each value swings slowly over time, with
    its own phase per device. Pure."""
    readings = []
    for gpu in gpus:
        swing = (1 + math.sin(now_s / SWING_PERIOD_S * 2 * math.pi + gpu.index)) / 2  # 0..1
        working = gpu.index in busy
        readings.append(
            GpuMetrics(
                index=gpu.index,
                uuid=gpu.uuid,
                utilization_pct=round(85 + 14 * swing, 1) if working else 0.0,
                memory_used_mib=int(gpu.memory_mib * (0.55 + 0.3 * swing)) if working else 0,
                memory_total_mib=gpu.memory_mib,
                temperature_c=round((62 + 12 * swing) if working else (31 + 3 * swing), 1),
                power_w=round((420 + 230 * swing) if working else (68 + 6 * swing), 1),
                sm_clock_mhz=round(1755 + 225 * swing) if working else 345.0,
                ecc_corrected=0,
                ecc_uncorrected=0,
            )
        )
    return tuple(readings)
