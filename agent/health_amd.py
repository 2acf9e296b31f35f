"""AMD GPU health through amdsmi: reset and ring-hang events, uncorrectable ECC errors past the limit, a lost device.

A device is unhealthy after an event that means the driver reset it (`RESET_EVENTS`: amdsmi's event
notification, one `AmdSmiEventReader` per device), with uncorrectable ECC errors past `ECC_UNCORRECTED_LIMIT`
(`amdsmi_get_gpu_total_ecc_count`, the sum over its RAS blocks), or when amdsmi can no longer read a device it
read when the watch started. amdsmi has no "fell off the bus" status: once a device is unplugged its VRAM
usage (a DRM ioctl on its render node) fails DRM_ERROR and its sysfs reads fail NOT_SUPPORTED (rocm_smi's
word for ENOENT), so "read before, fails now" is the sign. Its notification
has no RAS event either: a fatal RAS error makes the driver reset the GPU, which is GPU_PRE_RESET. Thermal
throttling and VM faults (a job's bad memory access) say nothing about the device, so they are not watched.
amdsmi never says a device recovered from a reset, so an event mark lasts for the agent's life.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from agent.detect.amd import _import_amdsmi, _int
from agent.detect.metrics import amd_reading
from agent.health_watch import ECC_UNCORRECTED_LIMIT, WatchUnavailable
from shared.wire import GpuHealth, GpuMetrics

log = logging.getLogger("gpuctl.agent")

# amdsmi_evt_notification_type_t members (AmdSmiEvtNotificationType in Python) that mark a device, with what
# they mean; README lists them with the same words.
RESET_EVENTS = {
    "GPU_PRE_RESET": "the driver is resetting the GPU",
    "GPU_POST_RESET": "the driver reset the GPU",
    "RING_HANG": "a ring hung and the GPU is reset",
}
EVENTS_PER_READ = 10  # AmdSmiEventReader.read's default buffer
# amdsmi_status_t values from amdsmi.h (ROCm 6.x)
AMDSMI_STATUS_NO_DATA = 40  # no event waiting
PASSING_STATUSES = frozenset({8, 9, 11, 30})  # TIMEOUT, RETRY, INTERRUPT, BUSY: ask again, not a verdict


class AmdSmiWatch:
    """amdsmi started, with an event reader per device; `check` reads the marks now, `read` the devices'
    readings (agent/readings.py) over the same session. Blocking calls: run them in a worker thread. Safe from
    several threads: one lock serializes them."""

    def __init__(self, amdsmi: Any) -> None:
        self.amdsmi = amdsmi
        self.lock = threading.Lock()
        amdsmi.amdsmi_init()
        try:
            self.handles = list(amdsmi.amdsmi_get_processor_handles())
        except amdsmi.AmdSmiException:
            self._shut_down()
            raise
        # amdsmi's handles are ctypes pointers, while an event names its device by the pointer's value
        self.index_of = {_address(h): i for i, h in enumerate(self.handles)}
        self.readable = {i for i, h in enumerate(self.handles) if not self._read_failure(h)}
        self.events: dict[int, GpuHealth] = {}  # the first reset event of each device
        self.read_failure = ""  # why the last read of events failed, said once per run of failures
        self.readers = self._readers()

    def _readers(self) -> list[Any]:
        """An event reader per device that takes one, for the kinds this amdsmi knows (RING_HANG came
        with ROCm 6.1.2); none from an amdsmi without event readers."""
        reader = getattr(self.amdsmi, "AmdSmiEventReader", None)
        kinds = getattr(self.amdsmi, "AmdSmiEvtNotificationType", None)
        if reader is None or kinds is None:
            log.warning("GPU resets are not watched: this amdsmi has no event reader")
            return []
        wanted = [getattr(kinds, name) for name in RESET_EVENTS if hasattr(kinds, name)]
        readers = []
        for index, handle in enumerate(self.handles):
            try:
                readers.append(reader(handle, wanted))
            except self.amdsmi.AmdSmiException as err:
                log.warning("GPU %d: resets cannot be watched: %s", index, err)
        return readers

    def check(self) -> tuple[GpuHealth, ...]:
        """Every unhealthy device now, by index: reset events seen so far, lost devices, ECC errors past the
        limit."""
        with self.lock:
            self._read_events()
            marks = dict(self.events)
            for index, handle in enumerate(self.handles):
                if index not in marks and (reason := self._device_problem(index, handle)):
                    marks[index] = GpuHealth(index=index, reason=reason)
        return tuple(marks[i] for i in sorted(marks))

    def read(self) -> tuple[GpuMetrics, ...]:
        """Every device's reading now (a value amdsmi cannot give is None)."""
        with self.lock:
            return tuple(amd_reading(self.amdsmi, i, h) for i, h in enumerate(self.handles))

    def _read_events(self) -> None:
        """Every event waiting. One reader reads every device's: amdsmi polls all that were set up."""
        if not self.readers:
            return
        while True:
            try:
                events = self.readers[0].read(0, EVENTS_PER_READ)
            except self.amdsmi.AmdSmiException as err:
                failure = "" if getattr(err, "err_code", None) == AMDSMI_STATUS_NO_DATA else str(err)
                if failure and failure != self.read_failure:
                    log.warning("reading amdsmi events failed: %s", failure)
                self.read_failure = failure
                return
            for event in events:
                index, name = self.index_of.get(_address(event["processor_handle"])), str(event["event"])
                if index is not None and name in RESET_EVENTS and index not in self.events:
                    self.events[index] = GpuHealth(index=index, reason=f"{name} ({RESET_EVENTS[name]})")
            if len(events) < EVENTS_PER_READ:
                return

    def _device_problem(self, index: int, handle: Any) -> str:
        if index in self.readable and self._read_failure(handle):
            return "gone: amdsmi can no longer read it"
        try:
            errors = _int(self.amdsmi.amdsmi_get_gpu_total_ecc_count(handle)["uncorrectable_count"])
        except (self.amdsmi.AmdSmiException, KeyError):
            return ""  # no ECC on this device (NOT_SUPPORTED), or a passing failure: not a verdict
        if errors is not None and errors >= ECC_UNCORRECTED_LIMIT:
            return f"{errors} uncorrectable ECC errors"
        return ""

    def _read_failure(self, handle: Any) -> bool:
        """Whether a read every amdgpu device answers (its VRAM use, through the DRM device) fails for a
        reason other than a passing one."""
        try:
            self.amdsmi.amdsmi_get_gpu_vram_usage(handle)
        except self.amdsmi.AmdSmiException as err:
            return getattr(err, "err_code", None) not in PASSING_STATUSES
        return False

    def close(self) -> None:
        """Release amdsmi, once a read or check in flight in a worker thread has finished."""
        with self.lock:
            self._release()

    def _release(self) -> None:
        for reader in self.readers:
            try:
                reader.stop()
            except self.amdsmi.AmdSmiException:
                pass  # nothing left to release that we could act on
        self._shut_down()

    def _shut_down(self) -> None:
        try:
            self.amdsmi.amdsmi_shut_down()
        except self.amdsmi.AmdSmiException:
            pass


def _address(handle: Any) -> Any:
    """A handle as a comparable value: a ctypes pointer's address (an event gives the bare int)."""
    return getattr(handle, "value", handle)


def open_amdsmi_watch(amdsmi: Any = None) -> AmdSmiWatch:
    """amdsmi's watch (the `amdsmi` package unless one is handed in). Raises WatchUnavailable when amdsmi
    cannot start."""
    try:
        amdsmi = amdsmi if amdsmi is not None else _import_amdsmi()
    except (ImportError, OSError) as err:
        raise WatchUnavailable(f"amdsmi cannot be loaded: {err}") from None
    try:
        return AmdSmiWatch(amdsmi)
    except amdsmi.AmdSmiException as err:
        raise WatchUnavailable(f"amdsmi failed: {err}") from None
