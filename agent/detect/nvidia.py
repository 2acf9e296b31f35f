"""NVIDIA GPUs through NVML (the `nvidia-ml-py` binding, imported as `pynvml`).

The NVML module is a parameter so tests can hand in a fake built from fixture data (tests/fakes.py lists the
calls used). NVLink peers come from each active link's far end (`nvmlDeviceGetNvLinkState`,
`nvmlDeviceGetNvLinkRemotePciInfo`): another GPU, or an NVSwitch that every GPU on it can reach.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from types import ModuleType
from typing import Any

import msgspec

from agent.detect.result import DetectResult
from agent.detect.sysfs import SYSFS_ROOT, read_numa_node, read_pcie_root, sysfs_pci_address
from shared.wire import GpuDevice

# Values from nvml.h; a stable ABI, kept here so a fake NVML module needs only functions and error classes.
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_DEVICE_MIG_ENABLE = 1
NVML_FEATURE_ENABLED = 1
NVML_NVLINK_MAX_LINKS = 36  # NVML's bound on link numbers; a GPU answers InvalidArgument past its last link
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0  # counts since the driver loaded (aggregate: over the device's life)

NO_LIBRARY_INFO = "NVIDIA: NVML library not found; no NVIDIA GPUs"

# Words in NVML product names that are brand, form factor or memory size, not the product itself.
_NAME_NOISE = re.compile(r"NVIDIA|TESLA|GEFORCE|QUADRO|PCIE|SXM\d*|\d+GB|HBM\w*|GENERATION", re.IGNORECASE)
# Link-level errors that mean "no (more) NVLinks here", not a broken GPU.
_NO_LINK = (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_FUNCTION_NOT_FOUND)


def detect_nvidia(nvml: Any = None, *, sysfs_root: str = SYSFS_ROOT) -> DetectResult:
    """Every whole NVIDIA GPU on this host, indexed as NVML indexes them, with its NVLink peers.

    No library → no devices and one info line. Any other NVML failure while starting → no devices and one
    warning naming the error. A GPU with MIG enabled, or one whose identity queries fail, is skipped with a
    warning; attributes a GPU does not support (serial, NVLink) are left empty. Always shuts NVML down
    again. Safe to call repeatedly; not safe concurrently with itself.
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
    driver = nvml_text(nvml.nvmlSystemGetDriverVersion())
    cuda = cuda_version_text(_optional(nvml, nvml.nvmlSystemGetCudaDriverVersion_v2, default=0))
    gpus: list[GpuDevice] = []
    remotes: dict[int, list[str]] = {}
    elsewhere: set[str] = set()  # PCI addresses of GPUs left out (MIG): far ends that are no NVSwitch
    warnings: list[str] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu = _device(nvml, index, handle, sysfs_root)
            mig = _mig_enabled(nvml, handle)
        except nvml.NVMLError as err:
            warnings.append(f"NVIDIA: GPU {index} skipped: {describe_nvml_error(err)}")
            continue
        if mig:
            warnings.append(
                f"NVIDIA: GPU {index} skipped: MIG is enabled and MIG instances are not supported yet; "
                f"disable MIG (nvidia-smi -i {index} -mig 0) to use it as a whole GPU"
            )
            elsewhere.add(sysfs_pci_address(gpu.pci_bus_id) or gpu.pci_bus_id)
            continue
        gpus.append(msgspec.structs.replace(gpu, driver_version=driver, cuda_version=cuda))
        remotes[index] = nvlink_remotes(nvml, handle)
    linked = tuple(
        msgspec.structs.replace(g, links=peers)
        for g, peers in zip(gpus, nvlink_peers(gpus, remotes, elsewhere), strict=True)
    )
    info = (f"NVIDIA: driver {driver}, CUDA {cuda or 'unknown'}, {len(gpus)} GPUs",)
    return DetectResult(gpus=linked, warnings=tuple(warnings), info=info)


def _device(nvml: Any, index: int, handle: Any, sysfs_root: str) -> GpuDevice:
    """One GPU's facts (its NVLink peers and versions are filled in by the caller)."""
    bus_id = nvml_text(nvml.nvmlDeviceGetPciInfo(handle).busId)
    capability = _optional(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle, default=None)
    return GpuDevice(
        index=index,
        vendor="nvidia",
        name=normalize_nvidia_name(nvml_text(nvml.nvmlDeviceGetName(handle))),
        memory_mib=nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024),
        uuid=nvml_text(nvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=bus_id,
        numa_node=read_numa_node(bus_id, sysfs_root),
        compute_capability=f"{capability[0]}.{capability[1]}" if capability else "",
        serial=nvml_text(_optional(nvml, nvml.nvmlDeviceGetSerial, handle, default="")),
        pcie_root=read_pcie_root(bus_id, sysfs_root),
    )


def nvlink_remotes(nvml: Any, handle: Any) -> list[str]:
    """The PCI address at the far end of each active NVLink of a GPU (a GPU's, or an NVSwitch's); empty for
    a GPU without NVLink. A link whose query fails for another reason is left out."""
    remotes: list[str] = []
    for link in range(NVML_NVLINK_MAX_LINKS):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != NVML_FEATURE_ENABLED:
                continue
            remote = nvml_text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
        except nvml.NVMLError as err:
            if getattr(err, "value", None) in _NO_LINK:
                break
            continue
        address = sysfs_pci_address(remote)
        if address is not None:
            remotes.append(address)
    return remotes


def nvlink_peers(
    gpus: list[GpuDevice], remotes: dict[int, list[str]], elsewhere: Collection[str] = ()
) -> list[tuple[int, ...]]:
    """Each GPU's NVLink peers: GPUs at the far end of one of its links, and GPUs that share an NVSwitch
    with it. A far end that is neither one of `gpus` nor in `elsewhere` (GPUs left out) is a switch. Pure."""
    index_at = {sysfs_pci_address(g.pci_bus_id): g.index for g in gpus}
    switches: dict[str, set[int]] = {}
    peers: dict[int, set[int]] = {g.index: set() for g in gpus}
    for index, far_ends in remotes.items():
        for address in far_ends:
            if address in elsewhere:
                continue
            if address in index_at:
                peers[index].add(index_at[address])
                peers[index_at[address]].add(index)
            else:
                switches.setdefault(address, set()).add(index)
    for attached in switches.values():
        for index in attached:
            peers[index] |= attached
    return [tuple(sorted(peers[g.index] - {g.index})) for g in gpus]


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version, 12040 → `"12.4"`; 0 (unknown) → `""`. Pure."""
    if version <= 0:
        return ""
    return f"{version // 1000}.{version % 1000 // 10}"


def _optional(nvml: Any, query: Any, *args: Any, default: Any) -> Any:
    """An attribute that not every GPU or driver has: its value, or `default` on any NVML error."""
    try:
        return query(*args)
    except nvml.NVMLError:
        return default


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    """True when MIG is on now; GPUs without MIG support answer NotSupported, which means off."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError_NotSupported:
        return False
    return current == NVML_DEVICE_MIG_ENABLE


def nvml_text(value: str | bytes) -> str:
    """NVML strings arrive as bytes from older bindings and str from newer ones."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def normalize_nvidia_name(raw: str) -> str:
    """`"NVIDIA H100 80GB HBM3"` → `"H100"`, `"NVIDIA GeForce RTX 4090"` → `"RTX4090"`.

    Drops brand words, form factor and memory size; joins what is left. Pure.
    """
    words = [w for w in re.split(r"[\s\-]+", raw.strip()) if w and not _NAME_NOISE.fullmatch(w)]
    return "".join(words) or raw.strip()
