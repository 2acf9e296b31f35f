"""The agents' device readings as Prometheus families, named and labelled after DCGM exporter's habits.

Every family is labelled `host` (its name), `gpu` (the device index), `uuid`, `job` and `project`, the last two
empty when no allocation holds the GPU. The values are each GPU's latest reading, as a gauge; a host whose
lease ran out shows none (its last reading is not the present). `gpuctl_gpu_ecc_errors_total` counts volatile
ECC errors (since the driver loaded, so it may restart from 0 as a counter may). `gpuctl_gpu_xid_errors` is the
last XID the device reported (0 for none), as DCGM exporter's DCGM_FI_DEV_XID_ERRORS is. Label values are
bounded by the hosts and GPUs that exist and the jobs running on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shared.wire import GpuMetrics

if TYPE_CHECKING:
    from coordinator.service import Coordinator

LABELS = ["host", "gpu", "uuid", "job", "project"]
MIB = 1024 * 1024
# (family, help, the value of a reading; None: not reported)
GAUGES = (
    ("gpuctl_gpu_utilization_percent", "GPU utilization", lambda r: r.utilization_pct),
    ("gpuctl_gpu_memory_used_bytes", "GPU memory used", lambda r: _bytes(r.memory_used_mib)),
    ("gpuctl_gpu_memory_total_bytes", "GPU memory in all", lambda r: _bytes(r.memory_total_mib)),
    ("gpuctl_gpu_temperature_celsius", "GPU temperature", lambda r: r.temperature_c),
    ("gpuctl_gpu_power_watts", "GPU power draw", lambda r: r.power_w),
    (
        "gpuctl_gpu_sm_clock_hertz",
        "GPU SM clock",
        lambda r: None if r.sm_clock_mhz is None else r.sm_clock_mhz * 1e6,
    ),
    (
        "gpuctl_gpu_xid_errors",
        "The last XID error of the GPU (0: none)",
        lambda r: r.xids[-1] if r.xids else 0,
    ),
)


def _bytes(mib: int | None) -> float | None:
    return None if mib is None else float(mib * MIB)


def device_families(c: Coordinator) -> Iterator[Metric]:
    """The device families of every host heard from within its lease, read at the scrape."""
    holders = _holders(c)
    gauges = [(GaugeMetricFamily(name, text, labels=LABELS), value) for name, text, value in GAUGES]
    ecc = CounterMetricFamily(
        "gpuctl_gpu_ecc_errors", "Volatile ECC errors of the GPU", labels=[*LABELS, "type"]
    )
    lease_s = c.lease_s()
    for host_id, name in c.device_readings.hosts():
        if c.silent_s(host_id) > lease_s:
            continue
        for index, sample in c.device_readings.latest(host_id).items():
            reading = sample.reading
            labels = [name, str(index), reading.uuid, *holders.get((host_id, index), ("", ""))]
            for family, value in gauges:
                found = value(reading)
                if found is not None:
                    family.add_metric(labels, found)
            _add_ecc(ecc, labels, reading)
    for family, _ in gauges:
        yield family
    yield ecc


def _add_ecc(ecc: CounterMetricFamily, labels: list[str], reading: GpuMetrics) -> None:
    for kind, count in (("corrected", reading.ecc_corrected), ("uncorrected", reading.ecc_uncorrected)):
        if count is not None:
            ecc.add_metric([*labels, kind], count)


def _holders(c: Coordinator) -> dict[tuple[str, int], tuple[str, str]]:
    """(host id, GPU index) -> (job id, project) of every GPU an allocation not yet ended holds."""
    projects: dict[str, str] = {}
    holders = {}
    for alloc in c.store.active_allocations():
        if alloc.job_id not in projects:
            job = c.store.get_job(alloc.job_id)
            projects[alloc.job_id] = job.project if job else ""
        for gpu in alloc.gpus:
            holders[(alloc.host_id, gpu)] = (alloc.job_id, projects[alloc.job_id])
    return holders
