"""The agents' device readings as Prometheus families, named and labelled after DCGM exporter's habits.

Every sample is labelled `host` (its name), `gpu` (the device index), `uuid`, `job` and `project`, the last two
empty when no allocation holds the GPU. The values are each GPU's latest reading, as a gauge; a host whose
lease ran out shows none (its last reading is not the present). `gpuctl_gpu_ecc_errors_total` counts volatile
ECC errors (since the driver loaded, so it may restart from 0 as a counter may). `gpuctl_gpu_xid_errors` is the
last XID the device reported (0 for none), as DCGM exporter's DCGM_FI_DEV_XID_ERRORS is. Label values are
bounded by the hosts and GPUs that exist and the jobs running on them.

Written here in Prometheus's text format rather than through prometheus-client's families: these are eight
samples a GPU, and prometheus-client escapes every label of every sample as it writes it, about 20 µs a
sample; at 1,000 hosts of 8 GPUs the scrape took 1.5 s of the event loop (`python -m bench.scrape 1000 2000`,
a shared two-core machine). Here a GPU's labels are escaped once and its values read straight from its ring,
and the text is written in a worker thread.
"""

from __future__ import annotations

import json
from array import array
from typing import TYPE_CHECKING

from coordinator.sample_ring import VALUES, SampleRing
from coordinator.store import TERMINAL_ALLOC_STATES

if TYPE_CHECKING:
    from coordinator.service import Coordinator

MIB = 1024 * 1024
# (family, help, the value of VALUES it shows, its factor to the family's unit)
GAUGES = (
    ("gpuctl_gpu_utilization_percent", "GPU utilization", "utilization_pct", 1),
    ("gpuctl_gpu_memory_used_bytes", "GPU memory used", "memory_used_mib", MIB),
    ("gpuctl_gpu_memory_total_bytes", "GPU memory in all", "memory_total_mib", MIB),
    ("gpuctl_gpu_temperature_celsius", "GPU temperature", "temperature_c", 1),
    ("gpuctl_gpu_power_watts", "GPU power draw", "power_w", 1),
    ("gpuctl_gpu_sm_clock_hertz", "GPU SM clock (AMD: graphics clock)", "sm_clock_mhz", 1_000_000),
)
ECC = (("corrected", "ecc_corrected"), ("uncorrected", "ecc_uncorrected"))
XID = "gpuctl_gpu_xid_errors"
ECC_FAMILY = "gpuctl_gpu_ecc_errors_total"
Row = tuple[str, "array[float]", tuple[int, ...]]  # a GPU's labels, its latest values (VALUES), its XIDs
# (host id, name, its rings) of the hosts shown, and (host id, GPU index) -> (job id, project) of held GPUs
Snapshot = tuple[list[tuple[str, str, list[SampleRing]]], dict[tuple[str, int], tuple[str, str]]]


def device_text(snapshot: Snapshot) -> str:
    """The device families of a `device_snapshot` in the text format. The scrape runs it in a worker
    thread, so the event loop goes on serving syncs meanwhile: at 10,000 hosts it is most of a scrape."""
    rows = _rows(snapshot)
    out = []
    for family, text, name, factor in GAUGES:
        column = VALUES.index(name)
        out.append(f"# HELP {family} {text}\n# TYPE {family} gauge\n")
        out += [
            f"{family}{{{labels}}} {_number(v[column], factor)}\n"
            for labels, v, _ in rows
            if v[column] == v[column]
        ]
    out.append(f"# HELP {XID} The last XID error of the GPU (0: none)\n# TYPE {XID} gauge\n")
    out += [f"{XID}{{{labels}}} {xids[-1] if xids else 0}\n" for labels, _, xids in rows]
    out.append(f"# HELP {ECC_FAMILY} Volatile ECC errors of the GPU\n# TYPE {ECC_FAMILY} counter\n")
    for kind, name in ECC:
        column = VALUES.index(name)
        out += [
            f'{ECC_FAMILY}{{{labels},type="{kind}"}} {int(v[column])}\n'
            for labels, v, _ in rows
            if v[column] == v[column]
        ]
    return "".join(out)


def device_snapshot(c: Coordinator) -> Snapshot:
    """What the device families show, read on the event loop: the rings of the hosts heard from within their
    lease, and who holds each GPU. Cheap: the values are read later, from the rings, by `device_text`."""
    lease_s = c.lease_s()
    hosts = [host for host in c.device_readings.rings() if c.silent_s(host[0]) <= lease_s]
    return hosts, _holders(c)


def _rows(snapshot: Snapshot) -> list[Row]:
    """(labels, latest values, XIDs) of every GPU of the snapshot with a reading."""
    hosts, holders = snapshot
    rows = []
    for host_id, name, rings in hosts:
        host = _escape(name)
        for ring in rings:
            latest = ring.latest_values()
            if latest is None:
                continue
            job, project = holders.get((host_id, ring.index), ("", ""))
            labels = f'host="{host}",gpu="{ring.index}",uuid="{_escape(ring.uuid)}",job="{job}",project="{_escape(project)}"'
            rows.append((labels, latest, ring.xids))
    return rows


def _holders(c: Coordinator) -> dict[tuple[str, int], tuple[str, str]]:
    """(host id, GPU index) -> (job id, project) of every GPU an allocation not yet ended holds: one query
    (reading each job whole, its spec decoded, was most of the families' time at 2,000 running jobs)."""
    marks = ",".join("?" * len(TERMINAL_ALLOC_STATES))
    rows = c.store.db.execute(
        "SELECT a.host_id, a.gpus, a.job_id, j.project FROM allocations a JOIN jobs j ON j.id = a.job_id"
        f" WHERE a.state NOT IN ({marks})",
        TERMINAL_ALLOC_STATES,
    ).fetchall()
    return {
        (host_id, gpu): (job_id, project)
        for host_id, gpus, job_id, project in rows
        for gpu in json.loads(gpus)
    }


def _escape(value: str) -> str:
    """A label value as the text format writes it."""
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value  # nearly always: host names, UUIDs, project names
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _number(value: float, factor: int) -> str:
    """A 32-bit float as its reading said it (655.12, not 655.1199951171875), in the family's unit."""
    said = float(f"{value:.6g}")
    return repr(said) if factor == 1 else str(int(said * factor))
