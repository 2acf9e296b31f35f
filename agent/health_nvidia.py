"""NVIDIA GPU health through NVML: critical XIDs, uncorrectable ECC errors past the limit, a device off the bus.

A device is unhealthy after an XID that means it must be reset or is gone (`RESET_XIDS`, from NVIDIA's Xid
catalogue), with volatile uncorrectable ECC errors past `ECC_UNCORRECTED_LIMIT`, or when NVML says it fell off
the bus. XIDs arrive as NVML events (an event set registered for `nvmlEventTypeXidCriticalError`); NVML cannot
say a device recovered from one, so an XID mark lasts for the agent's life.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from agent.detect.metrics import nvidia_reading
from agent.detect.nvidia import NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, _import_pynvml
from agent.health_watch import ECC_UNCORRECTED_LIMIT, WatchUnavailable
from shared.wire import MAX_XIDS, GpuHealth, GpuMetrics

log = logging.getLogger("gpuctl.agent")

# XIDs whose resolution in NVIDIA's Xid catalogue (docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html)
# is a GPU reset or node reboot, or that mean the device is gone; README lists them with the same words.
RESET_XIDS = {
    48: "double-bit ECC error",
    62: "internal micro-controller halt",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "fallen off the bus",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
# Values from nvml.h, as in agent/detect/nvidia.py.
NVML_EVENT_TYPE_XID_CRITICAL_ERROR = 0x8
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15


class NvmlWatch:
    """NVML started, with an event set for every device's critical XIDs; `check` reads the marks now, `read`
    the devices' readings (agent/readings.py), over the same NVML session and events. Blocking calls: run them
    in a worker thread. Safe from several threads: one lock serializes them."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.lock = threading.Lock()
        nvml.nvmlInit()
        self.events = nvml.nvmlEventSetCreate()
        self.count = nvml.nvmlDeviceGetCount()
        self.xids: dict[int, GpuHealth] = {}  # the first reset XID of each device; NVML never clears one
        self.seen: dict[int, deque[int]] = {}  # every XID of each device, the latest MAX_XIDS, for readings
        self.index_of: dict[Any, int] = {}
        for index in range(self.count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self.index_of[handle] = index
            try:
                nvml.nvmlDeviceRegisterEvents(handle, NVML_EVENT_TYPE_XID_CRITICAL_ERROR, self.events)
            except nvml.NVMLError as err:
                log.warning("GPU %d: XID events cannot be watched: %s", index, err)

    def check(self) -> tuple[GpuHealth, ...]:
        """Every unhealthy device now, by index: XIDs seen so far, lost devices, ECC errors past the limit."""
        with self.lock:
            self._read_events()
            marks = dict(self.xids)
            for index in range(self.count):
                if index not in marks and (reason := self._device_problem(index)):
                    marks[index] = GpuHealth(index=index, reason=reason)
        return tuple(marks[i] for i in sorted(marks))

    def read(self) -> tuple[GpuMetrics, ...]:
        """Every device's reading now, with the XIDs seen on it; a device NVML cannot reach has none (`check`
        says why)."""
        readings = []
        with self.lock:
            self._read_events()
            for index in range(self.count):
                try:
                    readings.append(nvidia_reading(self.nvml, index, tuple(self.seen.get(index, ()))))
                except self.nvml.NVMLError:
                    pass
        return tuple(readings)

    def _read_events(self) -> None:
        while True:
            try:
                event = self.nvml.nvmlEventSetWait_v2(self.events, 0)
            except self.nvml.NVMLError as err:
                if getattr(err, "value", None) != NVML_ERROR_TIMEOUT:
                    log.warning("reading NVML events failed: %s", err)
                return
            index, xid = self.index_of.get(event.device), int(event.eventData)
            if index is not None:
                self.seen.setdefault(index, deque(maxlen=MAX_XIDS)).append(xid)
            if index is not None and xid in RESET_XIDS and index not in self.xids:
                self.xids[index] = GpuHealth(index=index, reason=f"XID {xid} ({RESET_XIDS[xid]})")

    def _device_problem(self, index: int) -> str:
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            errors = nvml.nvmlDeviceGetTotalEccErrors(
                handle, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC
            )
        except nvml.NVMLError as err:
            if getattr(err, "value", None) == NVML_ERROR_GPU_IS_LOST:
                return "fallen off the bus"
            return ""  # no ECC on this device (NotSupported), or a passing failure: not a verdict
        if errors >= ECC_UNCORRECTED_LIMIT:
            return f"{errors} uncorrectable ECC errors"
        return ""

    def close(self) -> None:
        """Release NVML, once a read or check in flight in a worker thread has finished."""
        with self.lock:
            self._release()

    def _release(self) -> None:
        for call in (lambda: self.nvml.nvmlEventSetFree(self.events), self.nvml.nvmlShutdown):
            try:
                call()
            except self.nvml.NVMLError:
                pass  # nothing left to release that we could act on


def open_nvml_watch(nvml: Any = None) -> NvmlWatch:
    """NVML's watch (`pynvml` unless one is handed in). Raises WatchUnavailable when NVML cannot start."""
    try:
        nvml = nvml if nvml is not None else _import_pynvml()
    except ImportError as err:
        raise WatchUnavailable(f"NVML cannot be loaded: {err}") from None
    try:
        return NvmlWatch(nvml)
    except nvml.NVMLError as err:
        raise WatchUnavailable(f"NVML failed: {err}") from None
