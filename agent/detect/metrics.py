"""Live device readings (utilization, memory, temperature, power, SM clock, ECC counts), apart from the inventory.

A reading changes every second; the inventory must not, or every sync would resend it. The vendor modules
are parameters, as in detection, so tests replay fixture data. Nothing here raises for a missing or failing
library: a reading that cannot be taken is simply absent (detection already reported why).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.detect.amd import _import_amdsmi
from agent.detect.gaudi import Runner, read_gaudi_metrics
from agent.detect.nvidia import (
    NVML_CLOCK_SM,
    NVML_MEMORY_ERROR_TYPE_CORRECTED,
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    NVML_TEMPERATURE_GPU,
    NVML_VOLATILE_ECC,
    _import_pynvml,
    nvml_text,
)
from shared.wire import MAX_XIDS, GpuMetrics

MIB = 1024 * 1024


def read_metrics(
    nvml: Any = None, amdsmi: Any = None, hl_smi: Runner | None = None
) -> tuple[GpuMetrics, ...]:
    """One reading per device of every vendor present, in the detectors' index spaces. Never raises."""
    return read_nvidia_metrics(nvml) + read_amd_metrics(amdsmi) + read_gaudi_metrics(hl_smi)


def read_nvidia_metrics(nvml: Any = None) -> tuple[GpuMetrics, ...]:
    """Every NVIDIA GPU's reading through NVML; () without NVML or when it fails to start."""
    if nvml is None:
        try:
            nvml = _import_pynvml()
        except ImportError:
            return ()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return ()
    try:
        return tuple(nvidia_reading(nvml, i) for i in range(nvml.nvmlDeviceGetCount()))
    except nvml.NVMLError:
        return ()
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def nvidia_reading(nvml: Any, index: int, xids: Sequence[int] = ()) -> GpuMetrics:
    """One device's reading; `xids`: the XIDs seen on it (agent/health.py watches them), oldest first.
    A value the device does not report is None; raises NVMLError only when the device cannot be reached."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def read(query: Callable[[], Any]) -> Any:
        try:
            return query()
        except nvml.NVMLError:
            return None

    def ecc(kind: int) -> int | None:
        return read(lambda: nvml.nvmlDeviceGetTotalEccErrors(handle, kind, NVML_VOLATILE_ECC))

    utilization = read(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    memory = read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    temperature = read(lambda: nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU))
    power_mw = read(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    sm_clock = read(lambda: nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM))
    uuid = read(lambda: nvml.nvmlDeviceGetUUID(handle))
    return GpuMetrics(
        index=index,
        utilization_pct=None if utilization is None else float(utilization),
        memory_used_mib=None if memory is None else memory.used // MIB,
        temperature_c=None if temperature is None else float(temperature),
        power_w=None if power_mw is None else power_mw / 1000,
        uuid="" if uuid is None else nvml_text(uuid),
        memory_total_mib=None if memory is None else memory.total // MIB,
        sm_clock_mhz=None if sm_clock is None else float(sm_clock),
        ecc_corrected=ecc(NVML_MEMORY_ERROR_TYPE_CORRECTED),
        ecc_uncorrected=ecc(NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        xids=tuple(xids[-MAX_XIDS:]),
    )


def read_amd_metrics(amdsmi: Any = None) -> tuple[GpuMetrics, ...]:
    """Every AMD GPU's reading through amdsmi (integrated GPUs too: indices match amdsmi's enumeration)."""
    if amdsmi is None:
        try:
            amdsmi = _import_amdsmi()
        except (ImportError, OSError):
            return ()
    try:
        amdsmi.amdsmi_init()
    except amdsmi.AmdSmiException:
        return ()
    try:
        handles = amdsmi.amdsmi_get_processor_handles()
        return tuple(amd_reading(amdsmi, i, h) for i, h in enumerate(handles))
    except amdsmi.AmdSmiException:
        return ()
    finally:
        try:
            amdsmi.amdsmi_shut_down()
        except amdsmi.AmdSmiException:
            pass


def amd_reading(amdsmi: Any, index: int, handle: Any) -> GpuMetrics:
    def read(query: Callable[[], Any]) -> float | None:
        try:
            value = query()
        except (amdsmi.AmdSmiException, AttributeError, KeyError, TypeError):
            return None
        return float(value) if isinstance(value, int | float) else None  # amdsmi says "N/A" as text

    def whole(query: Callable[[], Any]) -> int | None:
        value = read(query)
        return None if value is None else int(value)

    def uuid() -> str:
        try:
            return str(amdsmi.amdsmi_get_gpu_device_uuid(handle))
        except amdsmi.AmdSmiException:
            return ""

    temperature_type = getattr(getattr(amdsmi, "AmdSmiTemperatureType", None), "HOTSPOT", None)
    current = getattr(getattr(amdsmi, "AmdSmiTemperatureMetric", None), "CURRENT", None)
    gfx = getattr(
        getattr(amdsmi, "AmdSmiClkType", None), "GFX", None
    )  # the shader engines: NVIDIA's SM clock
    return GpuMetrics(
        index=index,
        utilization_pct=read(lambda: amdsmi.amdsmi_get_gpu_activity(handle)["gfx_activity"]),
        memory_used_mib=whole(lambda: amdsmi.amdsmi_get_gpu_vram_usage(handle)["vram_used"]),  # MB
        temperature_c=read(lambda: amdsmi.amdsmi_get_temp_metric(handle, temperature_type, current)),
        power_w=read(lambda: amdsmi.amdsmi_get_power_info(handle)["current_socket_power"]),
        uuid=uuid(),
        memory_total_mib=whole(lambda: amdsmi.amdsmi_get_gpu_vram_usage(handle)["vram_total"]),
        sm_clock_mhz=read(lambda: _current_clock(amdsmi.amdsmi_get_clock_info(handle, gfx))),
        ecc_corrected=whole(lambda: amdsmi.amdsmi_get_gpu_total_ecc_count(handle)["correctable_count"]),
        ecc_uncorrected=whole(lambda: amdsmi.amdsmi_get_gpu_total_ecc_count(handle)["uncorrectable_count"]),
    )


def _current_clock(info: dict[str, Any]) -> Any:
    """amdsmi's current clock: `clk` since ROCm 6.1, `cur_clk` before."""
    return info["clk"] if "clk" in info else info["cur_clk"]
