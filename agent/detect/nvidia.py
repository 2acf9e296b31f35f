"""NVIDIA GPUs through NVML (the `nvidia-ml-py` binding, imported as `pynvml`).

The NVML module is a parameter so tests can hand in a fake built from fixture data. Only the calls named
in `detect_nvidia` are used.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from agent.detect.result import DetectResult
from agent.detect.sysfs import SYSFS_ROOT, read_numa_node
from shared.wire import GpuDevice

# Values from nvml.h; a stable ABI, kept here so a fake NVML module needs only functions and error classes.
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_DEVICE_MIG_ENABLE = 1

NO_LIBRARY_INFO = "NVIDIA: NVML library not found; no NVIDIA GPUs"

# Words in NVML product names that are brand, form factor or memory size, not the product itself.
_NAME_NOISE = re.compile(r"NVIDIA|TESLA|GEFORCE|QUADRO|PCIE|SXM\d*|\d+GB|HBM\w*|GENERATION", re.IGNORECASE)


def detect_nvidia(nvml: Any = None, *, sysfs_root: str = SYSFS_ROOT) -> DetectResult:
    """Every whole NVIDIA GPU on this host, indexed as NVML indexes them.

    No library → no devices and one info line. Any other NVML failure while starting → no devices and one
    warning naming the error. A GPU with MIG enabled, or one whose queries fail, is skipped with a
    warning. Always shuts NVML down again. Safe to call repeatedly; not safe concurrently with itself.
    """
    if nvml is None:
        try:
            nvml = _import_pynvml()
        except ImportError:
            return DetectResult(info=(NO_LIBRARY_INFO,))
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        return _init_failure(err)
    try:
        return _enumerate(nvml, sysfs_root)
    except nvml.NVMLError as err:
        return DetectResult(warnings=(_failure_warning(err),))
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass  # nothing left to release that we could act on


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def _init_failure(err: Exception) -> DetectResult:
    if getattr(err, "value", None) == NVML_ERROR_LIBRARY_NOT_FOUND:
        return DetectResult(info=(NO_LIBRARY_INFO,))
    return DetectResult(warnings=(_failure_warning(err),))


def _failure_warning(err: Exception) -> str:
    return f"NVIDIA: NVML failed: {describe_nvml_error(err)} — GPUs on this host are not usable until it is fixed"


def describe_nvml_error(err: Exception) -> str:
    """A human line for an NVMLError; the version mismatch gets the words nvidia-smi uses for it."""
    if getattr(err, "value", None) == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return "Driver/library version mismatch"
    return str(err)


def _enumerate(nvml: Any, sysfs_root: str) -> DetectResult:
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    gpus: list[GpuDevice] = []
    warnings: list[str] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            gpu = _device(nvml, index, sysfs_root)
        except nvml.NVMLError as err:
            warnings.append(f"NVIDIA: GPU {index} skipped: {describe_nvml_error(err)}")
            continue
        if gpu is None:
            warnings.append(
                f"NVIDIA: GPU {index} skipped: MIG is enabled and MIG instances are not supported yet; "
                f"disable MIG (nvidia-smi -i {index} -mig 0) to use it as a whole GPU"
            )
            continue
        gpus.append(gpu)
    info = (f"NVIDIA: driver {driver}, {len(gpus)} GPUs",)
    return DetectResult(gpus=tuple(gpus), warnings=tuple(warnings), info=info)


def _device(nvml: Any, index: int, sysfs_root: str) -> GpuDevice | None:
    """One GPU's facts, or None when MIG is enabled on it (it cannot be handed out whole)."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    if _mig_enabled(nvml, handle):
        return None
    bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
    return GpuDevice(
        index=index,
        vendor="nvidia",
        name=normalize_nvidia_name(_text(nvml.nvmlDeviceGetName(handle))),
        memory_mib=nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=bus_id,
        numa_node=read_numa_node(bus_id, sysfs_root),
    )


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    """True when MIG is on now; GPUs without MIG support answer NotSupported, which means off."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError_NotSupported:
        return False
    return current == NVML_DEVICE_MIG_ENABLE


def _text(value: str | bytes) -> str:
    """NVML strings arrive as bytes from older bindings and str from newer ones."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def normalize_nvidia_name(raw: str) -> str:
    """`"NVIDIA H100 80GB HBM3"` → `"H100"`, `"NVIDIA GeForce RTX 4090"` → `"RTX4090"`.

    Drops brand words, form factor and memory size; joins what is left. Pure.
    """
    words = [w for w in re.split(r"[\s\-]+", raw.strip()) if w and not _NAME_NOISE.fullmatch(w)]
    return "".join(words) or raw.strip()
