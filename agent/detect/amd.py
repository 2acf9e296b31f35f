"""AMD GPUs through AMD SMI (the `amdsmi` Python package shipped with ROCm).

The amdsmi module is a parameter so tests can hand in a fake built from fixture data. Integrated GPUs
(Radeon graphics in a Ryzen APU) are left out: they are not accelerators a job should be given, and on a
workstation they would otherwise sit beside an NVIDIA card.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import msgspec

from agent.detect.result import DetectResult
from agent.detect.sysfs import SYSFS_ROOT, read_numa_node, read_pcie_root, read_render_node
from shared.wire import GpuDevice

NO_LIBRARY_INFO = "AMD: amdsmi not available; no AMD GPUs"
AMDSMI_LINK_TYPE_XGMI = 2  # amdsmi_link_type_t in amdsmi.h of ROCm 6.x; older bindings name theirs (below)

# PCI device ids of Instinct accelerators, for when amdsmi reports no market name (or only the raw id).
KNOWN_DEVICE_IDS: dict[int, str] = {
    0x74A1: "MI300X",
    0x74A0: "MI300A",
    0x74A5: "MI325X",
    0x740C: "MI250X",
    0x740F: "MI210",
    0x738C: "MI100",
}
# gfx targets of APUs' integrated graphics (LLVM's AMDGPU processor table). MI300A is an APU too, but an
# accelerator: it is told apart by its name.
INTEGRATED_GFX_TARGETS = frozenset(
    {
        "gfx801",
        "gfx902",
        "gfx909",
        "gfx90c",
        "gfx1013",
        "gfx1033",
        "gfx1035",
        "gfx1036",
        "gfx1037",
        "gfx1103",
        "gfx1150",
        "gfx1151",
        "gfx1152",
    }
)

_RAW_ID = re.compile(r"0x[0-9a-fA-F]+")
_NAME_NOISE = re.compile(r"AMD|INSTINCT|OAM", re.IGNORECASE)
_IGPU_NAME = re.compile(
    r"radeon(\(tm\))?(\s+\d{3,4}m)?\s+graphics|radeon\s+vega\s+\d+\s+graphics", re.IGNORECASE
)


def detect_amd(amdsmi: Any = None, *, sysfs_root: str = SYSFS_ROOT) -> DetectResult:
    """Every discrete AMD GPU on this host, indexed in amdsmi's enumeration order, with its XGMI peers.

    amdsmi not importable → no devices and one info line. Any `AmdSmiException` while enumerating → no
    devices and one warning naming it; attributes a GPU does not report (serial, driver) are left empty.
    Integrated GPUs are left out with an info line. Always shuts amdsmi down again once it started. Not
    safe concurrently with itself.
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
        handles = list(amdsmi.amdsmi_get_processor_handles())
        found = [_device(amdsmi, index, handle, sysfs_root) for index, handle in enumerate(handles)]
        peers = xgmi_peers(amdsmi, handles)
    except amdsmi.AmdSmiException as err:
        return DetectResult(warnings=(_failure_warning(err),))
    finally:
        try:
            amdsmi.amdsmi_shut_down()
        except amdsmi.AmdSmiException:
            pass  # nothing left to release that we could act on
    return _result(found, peers)


def _result(found: list[tuple[GpuDevice, bool]], peers: list[tuple[int, ...]]) -> DetectResult:
    """Discrete GPUs with their links among themselves; one info line per integrated GPU left out."""
    discrete = {gpu.index for gpu, integrated in found if not integrated}
    gpus = tuple(
        _replace_links(gpu, tuple(p for p in linked if p in discrete))
        for (gpu, integrated), linked in zip(found, peers, strict=True)
        if not integrated
    )
    info = [f"AMD: {len(gpus)} GPUs"]
    info += [
        f"AMD: integrated GPU {gpu.name} at {gpu.pci_bus_id} ignored"
        for gpu, integrated in found
        if integrated
    ]
    return DetectResult(gpus=gpus, info=tuple(info))


def _import_amdsmi() -> ModuleType:
    import amdsmi

    return amdsmi


def _failure_warning(err: Exception) -> str:
    return f"AMD: amdsmi failed: {err} — GPUs on this host are not usable until it is fixed"


def _device(amdsmi: Any, index: int, handle: Any, sysfs_root: str) -> tuple[GpuDevice, bool]:
    """One GPU's facts, and whether it is an integrated GPU."""
    asic = amdsmi.amdsmi_get_gpu_asic_info(handle)
    bdf = str(amdsmi.amdsmi_get_gpu_device_bdf(handle))
    market_name = str(asic.get("market_name", ""))
    target = str(asic.get("target_graphics_version", "") or "")
    driver = _optional(amdsmi, "amdsmi_get_gpu_driver_info", handle) or {}
    board = _optional(amdsmi, "amdsmi_get_gpu_board_info", handle) or {}
    gpu = GpuDevice(
        index=index,
        vendor="amd",
        name=amd_name(market_name, asic.get("device_id")),
        memory_mib=int(amdsmi.amdsmi_get_gpu_vram_info(handle)["vram_size"]),  # amdsmi reports MB = MiB
        uuid=str(amdsmi.amdsmi_get_gpu_device_uuid(handle)),
        pci_bus_id=bdf,
        numa_node=read_numa_node(bdf, sysfs_root),
        architecture=target if target.startswith("gfx") else "",
        serial=_known(board.get("product_serial")) or _known(asic.get("asic_serial")),
        driver_version=_known(driver.get("driver_version")),
        render_node=read_render_node(bdf, sysfs_root) or _render_node_from_amdsmi(amdsmi, handle),
        pcie_root=read_pcie_root(bdf, sysfs_root),
    )
    return gpu, is_integrated(market_name, target)


def xgmi_peers(amdsmi: Any, handles: list[Any]) -> list[tuple[int, ...]]:
    """For each GPU (by enumeration position), the GPUs one XGMI hop away. A pair whose link query fails
    counts as not linked: a missing link only costs placement quality."""
    xgmi = _xgmi_type(amdsmi)
    peers: list[set[int]] = [set() for _ in handles]
    for i, first in enumerate(handles):
        for j in range(i + 1, len(handles)):
            link = _optional(amdsmi, "amdsmi_topo_get_link_type", first, handles[j])
            if link and _int(link.get("type")) == xgmi and _int(link.get("hops")) == 1:
                peers[i].add(j)
                peers[j].add(i)
    return [tuple(sorted(p)) for p in peers]


def is_integrated(market_name: str, gfx_target: str) -> bool:
    """An APU's integrated graphics, by gfx target or by name (`AMD Radeon(TM) 780M Graphics`); never an
    Instinct accelerator (MI300A shares a die with CPUs but is one). Pure."""
    if "instinct" in market_name.lower():
        return False
    return gfx_target.lower() in INTEGRATED_GFX_TARGETS or bool(_IGPU_NAME.search(market_name))


def _xgmi_type(amdsmi: Any) -> int:
    """The XGMI link type's number in this amdsmi: its numbering changed between ROCm releases."""
    for enum_name, member in (("AmdSmiLinkType", "AMDSMI_LINK_TYPE_XGMI"), ("AmdSmiIoLinkType", "XGMI")):
        value = getattr(getattr(amdsmi, enum_name, None), member, None)
        if value is not None:
            return int(value)
    return AMDSMI_LINK_TYPE_XGMI


def _render_node_from_amdsmi(amdsmi: Any, handle: Any) -> str:
    info = _optional(amdsmi, "amdsmi_get_gpu_enumeration_info", handle) or {}
    minor = _int(info.get("drm_render"))
    return f"/dev/dri/renderD{minor}" if minor is not None else ""


def _optional(amdsmi: Any, name: str, *args: Any) -> Any:
    """A query that older amdsmi releases or some GPUs lack: its answer, or None."""
    query: Callable[..., Any] | None = getattr(amdsmi, name, None)
    if query is None:
        return None
    try:
        return query(*args)
    except amdsmi.AmdSmiException:
        return None


def _known(value: object) -> str:
    """amdsmi's text, with its "N/A" (and empty or missing) as ""."""
    text = "" if value is None else str(value).strip()
    return "" if text.upper() == "N/A" else text


def _int(value: object) -> int | None:
    """An int from amdsmi, which gives ints, enum members, ctypes values or "N/A" depending on release."""
    value = getattr(value, "value", value)
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _replace_links(gpu: GpuDevice, links: tuple[int, ...]) -> GpuDevice:
    return msgspec.structs.replace(gpu, links=links)


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
