"""AMD GPUs through AMD SMI (the `amdsmi` Python package shipped with ROCm).

The amdsmi module is a parameter so tests can hand in a fake built from fixture data. Only the calls named
in `detect_amd` are used.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from agent.detect.result import DetectResult
from agent.detect.sysfs import SYSFS_ROOT, read_numa_node
from shared.wire import GpuDevice

NO_LIBRARY_INFO = "AMD: amdsmi not available; no AMD GPUs"

# PCI device ids of Instinct accelerators, for when amdsmi reports no market name (or only the raw id).
KNOWN_DEVICE_IDS: dict[int, str] = {
    0x74A1: "MI300X",
    0x740C: "MI250X",
    0x740F: "MI210",
    0x738C: "MI100",
}

_RAW_ID = re.compile(r"0x[0-9a-fA-F]+")
_NAME_NOISE = re.compile(r"AMD|INSTINCT|OAM", re.IGNORECASE)


def detect_amd(amdsmi: Any = None, *, sysfs_root: str = SYSFS_ROOT) -> DetectResult:
    """Every AMD GPU on this host, indexed in amdsmi's enumeration order.

    amdsmi not importable → no devices and one info line. Any `AmdSmiException` → no devices and one
    warning naming it. Always shuts amdsmi down again once it started. Not safe concurrently with itself.
    """
    if amdsmi is None:
        try:
            amdsmi = _import_amdsmi()
        except (ImportError, OSError):
            return DetectResult(info=(NO_LIBRARY_INFO,))
    try:
        amdsmi.amdsmi_init()
    except amdsmi.AmdSmiException as err:
        return DetectResult(warnings=(_failure_warning(err),))
    try:
        handles = amdsmi.amdsmi_get_processor_handles()
        gpus = tuple(_device(amdsmi, index, handle, sysfs_root) for index, handle in enumerate(handles))
    except amdsmi.AmdSmiException as err:
        return DetectResult(warnings=(_failure_warning(err),))
    finally:
        try:
            amdsmi.amdsmi_shut_down()
        except amdsmi.AmdSmiException:
            pass  # nothing left to release that we could act on
    return DetectResult(gpus=gpus, info=(f"AMD: {len(gpus)} GPUs",))


def _import_amdsmi() -> ModuleType:
    import amdsmi

    return amdsmi


def _failure_warning(err: Exception) -> str:
    return f"AMD: amdsmi failed: {err} — GPUs on this host are not usable until it is fixed"


def _device(amdsmi: Any, index: int, handle: Any, sysfs_root: str) -> GpuDevice:
    asic = amdsmi.amdsmi_get_gpu_asic_info(handle)
    bdf = str(amdsmi.amdsmi_get_gpu_device_bdf(handle))
    return GpuDevice(
        index=index,
        vendor="amd",
        name=amd_name(str(asic.get("market_name", "")), asic.get("device_id")),
        memory_mib=int(amdsmi.amdsmi_get_gpu_vram_info(handle)["vram_size"]),  # amdsmi reports MB = MiB
        uuid=str(amdsmi.amdsmi_get_gpu_device_uuid(handle)),
        pci_bus_id=bdf,
        numa_node=read_numa_node(bdf, sysfs_root),
    )


def amd_name(market_name: str, device_id: int | str | None) -> str:
    """Short product name: `"AMD Instinct MI300X"` → `"MI300X"`, `"Instinct MI250X / MI250"` → `"MI250X"`.

    An empty, "N/A" or raw-hex market name falls back to `KNOWN_DEVICE_IDS`, else `"AMD-<id>"`. Pure.
    """
    name = market_name.strip()
    first = "" if name.upper() == "N/A" else name.split("/")[0].strip()
    if first and not _RAW_ID.fullmatch(first):
        words = [w for w in first.split() if not _NAME_NOISE.fullmatch(w)]
        if words:
            return "".join(words)
    number = _device_id_number(device_id if device_id not in (None, "") else first)
    if number is None:
        return f"AMD-{first or 'unknown'}"
    return KNOWN_DEVICE_IDS.get(number, f"AMD-{number:#06x}")


def _device_id_number(device_id: int | str | None) -> int | None:
    """amdsmi gives the device id as an int in some releases and as a hex string in others."""
    if isinstance(device_id, int):
        return device_id
    try:
        return int(str(device_id), 0)
    except ValueError:
        return None
