"""Fakes at the hardware boundary only: `pynvml`, `amdsmi`, `hl-smi` and sysfs, replaying fixture data.

The fixtures in tests/fixtures are modelled on real machines (published `nvidia-smi -q`, `nvidia-smi topo -m`,
`amd-smi static` / `amd-smi topology` and `hl-smi -Q` outputs); each says which in its `description`.
The NVML fake raises the real `pynvml.NVMLError` classes, so the detectors' except clauses run for real.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

from agent.blocks import make_blocks
from agent.detect.amd import detect_amd
from agent.detect.gaudi import detect_gaudi
from agent.detect.host import HostFacts, read_cpu_topology
from agent.detect.nvidia import detect_nvidia
from agent.detect.sysfs import parse_cpulist, sysfs_pci_address
from shared.wire import Inventory

FIXTURES = Path(__file__).parent / "fixtures"
NVLINK_STATE_ACTIVE = 1
ECC_KEYS = {
    pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: "ecc_corrected",
    pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: "ecc_uncorrected",
}


def load(kind: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / kind / f"{name}.json").read_text())


def nvml_error(name: str) -> pynvml.NVMLError:
    return pynvml.NVMLError(getattr(pynvml, f"NVML_ERROR_{name}"))


# --- NVML ----------------------------------------------------------------------------------------------


def _nvlinks(device: dict[str, Any]) -> list[str] | None:
    """The far end of each NVLink of a fixture device, one entry per link; None for a GPU without NVLink.
    Fixtures write `{far end bus id: link count}`."""
    if "nvlinks" not in device:
        return None
    return [far for far, count in device["nvlinks"].items() for _ in range(count)]


def fake_nvml(fixture: dict[str, Any]) -> SimpleNamespace:
    """A stand-in for the `pynvml` module answering from fixture data; `calls` records init/shutdown.

    Health: a test appends `(device index, xid)` to `xids` and the next `nvmlEventSetWait_v2` replays it, as
    NVML delivers an XID to an event set registered for it; `lost` holds the indices of devices fallen off
    the bus (their handle queries fail as NVML's do); a device's `ecc_uncorrected` and `ecc_corrected` are
    its volatile counts."""
    devices = fixture.get("devices", [])
    xids: list[tuple[int, int]] = []
    lost: set[int] = set()
    registered: set[int] = set()
    encode = (lambda s: s.encode()) if fixture.get("strings_as_bytes") else (lambda s: s)
    calls: list[str] = []

    def device(handle: int) -> dict[str, Any]:
        if handle in lost:
            raise nvml_error("GPU_IS_LOST")
        if devices[handle].get("error"):
            raise nvml_error(devices[handle]["error"])
        return devices[handle]

    def attribute(handle: int, key: str) -> Any:
        value = device(handle).get(key)
        if value is None:
            raise nvml_error("NOT_SUPPORTED")
        return value

    def init() -> None:
        calls.append("init")
        if fixture.get("init_error"):
            raise nvml_error(fixture["init_error"])

    def cuda_version() -> int:
        if "cuda_driver_version" not in fixture:
            raise nvml_error("FUNCTION_NOT_FOUND")
        return int(fixture["cuda_driver_version"])

    def nvlink_state(handle: int, link: int) -> int:
        links = _nvlinks(device(handle))
        if links is None:
            raise nvml_error("NOT_SUPPORTED")
        if link >= len(links):
            raise nvml_error("INVALID_ARGUMENT")
        return NVLINK_STATE_ACTIVE

    def nvlink_remote(handle: int, link: int) -> SimpleNamespace:
        links = _nvlinks(device(handle)) or []
        return SimpleNamespace(busId=encode(links[link]))

    def metric(handle: int, key: str) -> Any:
        return attribute(handle, "metrics")[key]

    def sm_clock(handle: int, clock: int) -> int:
        if clock != pynvml.NVML_CLOCK_SM or "sm_clock_mhz" not in device(handle).get("metrics", {}):
            raise nvml_error("NOT_SUPPORTED")
        return int(metric(handle, "sm_clock_mhz"))

    def handle_by_index(index: int) -> int:
        if index in lost:
            raise nvml_error("GPU_IS_LOST")
        return index

    def register_events(handle: int, types: int, event_set: str) -> None:
        if types != pynvml.nvmlEventTypeXidCriticalError:
            raise nvml_error("NOT_SUPPORTED")
        device(handle)
        registered.add(handle)

    def wait_event(event_set: str, timeout_ms: int) -> SimpleNamespace:
        while xids:
            index, xid = xids.pop(0)
            if index in registered:
                return SimpleNamespace(
                    device=index, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=xid
                )
        raise nvml_error("TIMEOUT")

    return SimpleNamespace(
        calls=calls,
        xids=xids,
        lost=lost,
        NVMLError=pynvml.NVMLError,
        NVMLError_NotSupported=pynvml.NVMLError_NotSupported,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: encode(fixture["driver_version"]),
        nvmlSystemGetCudaDriverVersion_v2=cuda_version,
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=handle_by_index,
        nvmlDeviceGetName=lambda h: encode(device(h)["name"]),
        nvmlDeviceGetUUID=lambda h: encode(device(h)["uuid"]),
        nvmlDeviceGetSerial=lambda h: encode(attribute(h, "serial")),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            total=device(h)["memory_total_bytes"],
            used=device(h).get("metrics", {}).get("memory_used_bytes", 0),
            free=0,
        ),
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=encode(device(h)["pci_bus_id"])),
        nvmlDeviceGetMigMode=lambda h: list(attribute(h, "mig_mode")),
        nvmlDeviceGetCudaComputeCapability=lambda h: tuple(attribute(h, "compute_capability")),
        nvmlDeviceGetNvLinkState=nvlink_state,
        nvmlDeviceGetNvLinkRemotePciInfo=nvlink_remote,
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=metric(h, "utilization_pct"), memory=0),
        nvmlDeviceGetTemperature=lambda h, sensor: metric(h, "temperature_c"),
        nvmlDeviceGetPowerUsage=lambda h: metric(h, "power_mw"),
        nvmlEventSetCreate=lambda: "event-set",
        nvmlEventSetFree=lambda event_set: None,
        nvmlDeviceRegisterEvents=register_events,
        nvmlEventSetWait_v2=wait_event,
        nvmlDeviceGetTotalEccErrors=lambda h, kind, counter: device(h).get(ECC_KEYS[kind], 0),
        nvmlDeviceGetClockInfo=sm_clock,
    )


def no_nvml_calls() -> SimpleNamespace:
    def refuse(*args: object) -> None:
        raise AssertionError("NVML must not be consulted")

    return SimpleNamespace(NVMLError=pynvml.NVMLError, nvmlInit=refuse)


# --- amdsmi --------------------------------------------------------------------------------------------


class AmdSmiException(Exception):
    """Stands for `amdsmi.AmdSmiException`, the base of everything amdsmi raises."""


# amdsmi_status_t values from amdsmi.h (ROCm 6.x) of the statuses the fakes raise
AMDSMI_STATUS = {
    "AMDSMI_STATUS_NOT_SUPPORTED": 2,
    "AMDSMI_STATUS_DRM_ERROR": 6,
    "AMDSMI_STATUS_INIT_ERROR": 18,
    "AMDSMI_STATUS_BUSY": 30,
    "AMDSMI_STATUS_DRIVER_NOT_LOADED": 34,
    "AMDSMI_STATUS_NO_DATA": 40,
}


class AmdSmiLibraryException(AmdSmiException):
    """Stands for `amdsmi.AmdSmiLibraryException`: a status of the library, as `err_code`."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.err_code = AMDSMI_STATUS[status]


class AmdSmiEvtNotificationType(enum.IntEnum):
    """amdsmi's event kinds (amdsmi_evt_notification_type_t, ROCm 6.1 and later)."""

    NONE = 0
    VMFAULT = 1
    THERMAL_THROTTLE = 2
    GPU_PRE_RESET = 3
    GPU_POST_RESET = 4
    RING_HANG = 5


AMDSMI_LINK_TYPE_PCIE, AMDSMI_LINK_TYPE_XGMI = 1, 2  # amdsmi_link_type_t, ROCm 6.x
HANDLE_BASE = 0x5600_0000  # where the fake's device handles point, one apart


def fake_amdsmi(fixture: dict[str, Any], init_error: str | None = None) -> SimpleNamespace:
    """A stand-in for the `amdsmi` module answering from fixture data; `calls` records init/shutdown and
    the event readers' stops.

    Handles are ctypes pointers, as amdsmi's are, while an event names its device by the pointer's value.
    Health: a test appends `(device index, event name)` to `events` and an `AmdSmiEventReader` reads it when
    that device's reader asked for that kind, as the kernel delivers only the masked ones; any reader reads
    every device's events, as amdsmi polls them all. `lost` holds the indices of devices unplugged: their
    VRAM usage (a DRM ioctl on the device's render node) fails DRM_ERROR, their other queries (sysfs files)
    NOT_SUPPORTED, which is what rocm_smi makes of ENOENT. A device's
    `ecc_uncorrectable` is its total uncorrectable count; without one, ECC is not supported."""
    devices = fixture.get("devices", [])
    calls: list[str] = []
    xgmi_all = fixture.get("links", {}).get("pairs") == "all"
    handles = [ctypes.c_void_p(HANDLE_BASE + i) for i in range(len(devices))]
    events: list[tuple[int, str]] = []
    lost: set[int] = set()
    masks: dict[int, set[str]] = {}  # device index -> the event kinds its reader asked for

    def init() -> None:
        calls.append("init")
        if init_error:
            raise AmdSmiLibraryException(init_error)

    def index_of(handle: ctypes.c_void_p) -> int:
        assert isinstance(handle, ctypes.c_void_p), "amdsmi takes its handles, not indices"
        return (handle.value or 0) - HANDLE_BASE

    def device(handle: ctypes.c_void_p) -> dict[str, Any]:
        index = index_of(handle)
        if index in lost:
            raise AmdSmiLibraryException("AMDSMI_STATUS_NOT_SUPPORTED")
        return devices[index]

    def link_type(first: ctypes.c_void_p, second: ctypes.c_void_p) -> dict[str, int]:
        if xgmi_all:
            return {"hops": 1, "type": AMDSMI_LINK_TYPE_XGMI}
        return {"hops": 2, "type": AMDSMI_LINK_TYPE_PCIE}

    def metric(h: ctypes.c_void_p, key: str) -> Any:
        return device(h).get("metrics", {}).get(key, "N/A")

    def vram_usage(h: ctypes.c_void_p) -> dict[str, Any]:
        if index_of(h) in lost:
            raise AmdSmiLibraryException("AMDSMI_STATUS_DRM_ERROR")
        return {"vram_used": metric(h, "vram_used_mb"), "vram_total": device(h)["vram_size_mb"]}

    def ecc(h: ctypes.c_void_p) -> dict[str, int]:
        uncorrectable = device(h).get("ecc_uncorrectable", metric(h, "ecc_uncorrectable"))
        if uncorrectable == "N/A":
            raise AmdSmiLibraryException("AMDSMI_STATUS_NOT_SUPPORTED")
        correctable = metric(h, "ecc_correctable")
        return {
            "correctable_count": 0 if correctable == "N/A" else correctable,
            "uncorrectable_count": uncorrectable,
            "deferred_count": 0,
        }

    class AmdSmiEventReader:
        """As amdsmi's: set up for one device and some kinds; `read` returns every device's waiting events,
        and raises NO_DATA when none came within the timeout."""

        def __init__(self, handle: ctypes.c_void_p, kinds: list[AmdSmiEvtNotificationType]) -> None:
            assert all(isinstance(k, AmdSmiEvtNotificationType) for k in kinds)
            device(handle)
            self.index = index_of(handle)
            masks[self.index] = {k.name for k in kinds}

        def read(self, timeout_ms: int, num_elem: int = 10) -> list[dict[str, Any]]:
            delivered = [e for e in events if e[1] in masks.get(e[0], ())]
            wanted = delivered[:num_elem]
            events[:] = delivered[num_elem:]
            if not wanted:
                raise AmdSmiLibraryException("AMDSMI_STATUS_NO_DATA")
            return [
                {"processor_handle": handles[i].value, "event": name, "message": ""} for i, name in wanted
            ]

        def stop(self) -> None:
            masks.pop(self.index, None)
            calls.append(f"stop {self.index}")

    return SimpleNamespace(
        calls=calls,
        events=events,
        lost=lost,
        AmdSmiException=AmdSmiException,
        AmdSmiEvtNotificationType=AmdSmiEvtNotificationType,
        AmdSmiEventReader=AmdSmiEventReader,
        AmdSmiLinkType=SimpleNamespace(AMDSMI_LINK_TYPE_PCIE=1, AMDSMI_LINK_TYPE_XGMI=AMDSMI_LINK_TYPE_XGMI),
        AmdSmiTemperatureType=SimpleNamespace(EDGE=0, HOTSPOT=1),
        AmdSmiTemperatureMetric=SimpleNamespace(CURRENT=0),
        amdsmi_init=init,
        amdsmi_shut_down=lambda: calls.append("shutdown"),
        amdsmi_get_processor_handles=lambda: list(handles),
        amdsmi_get_gpu_asic_info=lambda h: {
            "market_name": device(h)["market_name"],
            "device_id": device(h)["device_id"],
            "vendor_id": "0x1002",
            "asic_serial": "N/A",
            "target_graphics_version": device(h).get("target_graphics_version", "N/A"),
        },
        amdsmi_get_gpu_vram_info=lambda h: {"vram_type": 16, "vram_size": device(h)["vram_size_mb"]},
        amdsmi_get_gpu_device_uuid=lambda h: device(h)["uuid"],
        amdsmi_get_gpu_device_bdf=lambda h: device(h)["bdf"],
        amdsmi_get_gpu_driver_info=lambda h: {
            "driver_name": "amdgpu",
            "driver_version": device(h).get("driver_version", "N/A"),
        },
        amdsmi_get_gpu_board_info=lambda h: {"product_serial": device(h).get("product_serial", "N/A")},
        amdsmi_topo_get_link_type=link_type,
        amdsmi_get_gpu_activity=lambda h: {"gfx_activity": metric(h, "gfx_activity")},
        amdsmi_get_gpu_vram_usage=vram_usage,
        AmdSmiClkType=SimpleNamespace(GFX=0),
        amdsmi_get_clock_info=lambda h, clock: {"clk": metric(h, "gfx_clock_mhz")},
        amdsmi_get_temp_metric=lambda h, kind, which: metric(h, "hotspot_c"),
        amdsmi_get_power_info=lambda h: {"current_socket_power": metric(h, "socket_power_w")},
        amdsmi_get_gpu_total_ecc_count=ecc,
    )


# --- hl-smi --------------------------------------------------------------------------------------------


def fake_hl_smi(fixture: dict[str, Any], status: int = 0, stderr: str = "") -> Any:
    """A `Runner` that prints what `hl-smi -Q <fields> -f csv` printed for the fixture's devices; `argv`
    records the command lines it was given. The fixture is read at each run, so a test replays a device
    gone (removed from `devices`) or its ECC count rising (`ecc.errors.uncorrected.volatile.total`)."""
    units = fixture.get("units", {})
    seen: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        seen.append(list(argv))
        fields = argv[argv.index("-Q") + 1].split(",")
        header = ", ".join(f"{f} [{units[f]}]" if f in units else f for f in fields)
        rows = [", ".join(device[f] for f in fields) for device in fixture["devices"]]
        return status, "\n".join([header, *rows]) + "\n", stderr

    run.argv = seen  # type: ignore[attr-defined]
    return run


# --- sysfs and the host --------------------------------------------------------------------------------


def fake_sysfs(root: Path, fixture: dict[str, Any], key: str) -> str:
    """A sysfs tree for the fixture: each device at `devices/<pcie_root>/<address>` (numa_node, drm render
    node) linked from `bus/pci/devices/<address>`, and the host's NUMA nodes' CPU lists with hyperthread
    siblings. Returns the root, to pass as `sysfs_root`."""
    for device in fixture["devices"]:
        address = sysfs_pci_address(device[key])
        assert address is not None
        links = root / "bus" / "pci" / "devices"
        links.mkdir(parents=True, exist_ok=True)
        where = root / "devices" / device.get("pcie_root", "platform") / address
        where.mkdir(parents=True)
        (where / "numa_node").write_text(f"{device['numa_node']}\n")
        if "render_minor" in device:
            (where / "drm" / f"renderD{device['render_minor']}").mkdir(parents=True)
            (where / "drm" / f"card{device['render_minor'] - 128}").mkdir()
        os.symlink(os.path.relpath(where, links), links / address)
    _fake_cpus(root, fixture.get("host", {}))
    return str(root)


def _fake_cpus(root: Path, host: dict[str, Any]) -> None:
    offset = host.get("smt_sibling_offset")
    for node, cpulist in host.get("numa_cpulists", {}).items():
        (root / "devices" / "system" / "node" / f"node{node}").mkdir(parents=True)
        (root / "devices" / "system" / "node" / f"node{node}" / "cpulist").write_text(cpulist + "\n")
        for cpu in parse_cpulist(cpulist):
            first = cpu % offset if offset else cpu
            siblings = f"{first},{first + offset}" if offset else f"{cpu}"
            topology = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
            topology.mkdir(parents=True)
            (topology / "thread_siblings_list").write_text(siblings + "\n")


def fixture_host(fixture: dict[str, Any], sysfs_root: str, hostname: str = "gpu-node-7") -> HostFacts:
    """The host facts `detect_host` would read on the fixture's machine: its CPU ids (from the NUMA
    CPU lists) and their topology read back through the real sysfs parsers; 2 TB memory, 7 TB disk."""
    cpus = tuple(sorted(c for text in fixture["host"]["numa_cpulists"].values() for c in parse_cpulist(text)))
    return HostFacts(
        hostname=hostname,
        cpus=cpus,
        memory_mib=fixture["host"].get("memory_mib", 2_000_000),
        disk_mib=fixture["host"].get("disk_mib", 7_000_000),
        topology=read_cpu_topology(cpus, sysfs_root),
    )


def fixture_inventory(
    tmp_path: Path, kind: str, name: str, blocks: str | int = "auto", hostname: str | None = None
) -> Inventory:
    """The inventory the agent would send from the fixture's host: the real detector over the fake library
    and a fake sysfs under `tmp_path`, cut into blocks with the host's CPU topology; both runtimes."""
    fixture = load(kind, name)
    key = {"nvml": "pci_bus_id", "amdsmi": "bdf", "hlsmi": "bus_id"}[kind]
    root = fake_sysfs(tmp_path / f"{name}-{blocks}-{hostname}", fixture, key)
    if kind == "nvml":
        gpus = detect_nvidia(fake_nvml(fixture), sysfs_root=root).gpus
    elif kind == "amdsmi":
        gpus = detect_amd(fake_amdsmi(fixture), sysfs_root=root).gpus
    else:
        gpus = detect_gaudi(fake_hl_smi(fixture), sysfs_root=root).gpus
    host = fixture_host(fixture, root, hostname or name)
    return Inventory(
        hostname=host.hostname,
        cpu_count=len(host.cpus),
        memory_mib=host.memory_mib,
        disk_mib=host.disk_mib,
        gpus=gpus,
        blocks=make_blocks(gpus, host.cpus, host.memory_mib, host.disk_mib, blocks, host.topology),
        runtimes=("process", "docker"),
    )
