"""Live device readings (utilization, memory used, temperature, power), apart from the inventory.

A reading changes every second; the inventory must not, or every sync would resend it. The vendor modules
are parameters, as in detection, so tests replay fixture data. Nothing here raises for a missing or failing
library: a reading that cannot be taken is simply absent (detection already reported why).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.detect.amd import _import_amdsmi
from agent.detect.gaudi import Runner, read_gaudi_metrics
from agent.detect.nvidia import NVML_TEMPERATURE_GPU, _import_pynvml
from shared.wire import GpuMetrics

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
        return tuple(_nvidia_reading(nvml, i) for i in range(nvml.nvmlDeviceGetCount()))
    except nvml.NVMLError:
        return ()
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _nvidia_reading(nvml: Any, index: int) -> GpuMetrics:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def read(query: Callable[[], Any]) -> Any:
        try:
            return query()
        except nvml.NVMLError:
            return None

    utilization = read(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    used = read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used)
    temperature = read(lambda: nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU))
    power_mw = read(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    return GpuMetrics(
        index=index,
        utilization_pct=None if utilization is None else float(utilization),
        memory_used_mib=None if used is None else used // MIB,
        temperature_c=None if temperature is None else float(temperature),
        power_w=None if power_mw is None else power_mw / 1000,
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
        return tuple(_amd_reading(amdsmi, i, h) for i, h in enumerate(handles))
    except amdsmi.AmdSmiException:
        return ()
    finally:
        try:
            amdsmi.amdsmi_shut_down()
        except amdsmi.AmdSmiException:
            pass


def _amd_reading(amdsmi: Any, index: int, handle: Any) -> GpuMetrics:
    def read(query: Callable[[], Any]) -> float | None:
        try:
            value = query()
        except (amdsmi.AmdSmiException, AttributeError, KeyError):
            return None
        return float(value) if isinstance(value, int | float) else None  # amdsmi says "N/A" as text

    temperature_type = getattr(getattr(amdsmi, "AmdSmiTemperatureType", None), "HOTSPOT", None)
    current = getattr(getattr(amdsmi, "AmdSmiTemperatureMetric", None), "CURRENT", None)
    used_mib = read(lambda: amdsmi.amdsmi_get_gpu_vram_usage(handle)["vram_used"])  # MB
    return GpuMetrics(
        index=index,
        utilization_pct=read(lambda: amdsmi.amdsmi_get_gpu_activity(handle)["gfx_activity"]),
        memory_used_mib=None if used_mib is None else int(used_mib),
        temperature_c=read(lambda: amdsmi.amdsmi_get_temp_metric(handle, temperature_type, current)),
        power_w=read(lambda: amdsmi.amdsmi_get_power_info(handle)["current_socket_power"]),
    )
