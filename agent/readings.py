"""The readings loop: every `metrics_interval_s` (the coordinator's, from each sync's answer), read the devices
in a worker thread and keep the latest for the next sync (agent/sync.py), which sends it once. Readings never
make a request of their own, so they arrive at most one long poll late, stamped with their age.

Which reader: NVIDIA and AMD through the session that health watches (agent/health.py: the library started
once; NVML's one event set, so a reading carries the XIDs health saw), Gaudi through hl-smi, and made-up numbers
for a simulated host (agent/detect/simulate.py), busy where a job runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection

import msgspec

from agent.detect.gaudi import read_gaudi_metrics
from agent.detect.metrics import read_amd_metrics
from agent.detect.simulate import simulated_readings
from agent.health_watch import Reads
from agent.state import SharedState
from shared.wire import MAX_READINGS_AGE_S, GpuMetrics, Inventory

log = logging.getLogger("gpuctl.agent")

MIN_INTERVAL_S = (
    0.05  # a coordinator's interval is obeyed down to this: a reading takes NVML calls or a process
)
# busy GPU indices -> one reading per device; called in a worker thread
Reader = Callable[[Collection[int]], tuple[GpuMetrics, ...]]


def device_reader(inventory: Inventory, watch: Reads | None) -> Reader | None:
    """How this host's devices are read: through the health watch that holds the vendor's library open when
    it can read (NVML, amdsmi), else the vendor's one-shot reading; None when there is nothing to read."""
    if inventory.simulated and watch is None:
        gpus = inventory.gpus
        return lambda busy: simulated_readings(gpus, busy, time.time())
    if watch is not None:
        return lambda busy: watch.read()
    vendors = {gpu.vendor for gpu in inventory.gpus}
    if "amd" in vendors:
        return lambda busy: read_amd_metrics()
    if "intel" in vendors:
        return lambda busy: read_gaudi_metrics()
    return None


async def readings_loop(read: Reader, state: SharedState, busy: Callable[[], Collection[int]]) -> None:
    """Forever: read the devices, keep the latest in `state`, wait the coordinator's interval (with jitter).
    `busy`: the GPU indices running jobs hold now (read here, on the event loop)."""
    while True:
        readings = await asyncio.to_thread(read, frozenset(busy()))
        state.readings, state.readings_at = sound(readings), time.monotonic()
        interval_s = max(state.metrics_interval_s, MIN_INTERVAL_S)
        await asyncio.sleep(interval_s * random.uniform(0.9, 1.1))


def sound(readings: tuple[GpuMetrics, ...]) -> tuple[GpuMetrics, ...]:
    """The readings within the wire's bounds. A device reporting nonsense (a temperature past 1000 C) would
    have the coordinator refuse the whole sync; its reading is left out instead, and the log says why."""
    kept = []
    for reading in readings:
        try:
            kept.append(msgspec.convert(msgspec.to_builtins(reading), GpuMetrics))
        except msgspec.ValidationError as err:
            log.warning("GPU %d: reading left out: %s", reading.index, err)
    return tuple(kept)


def take_readings(state: SharedState, now: float) -> tuple[list[GpuMetrics], float]:
    """The latest readings and their age for the sync about to go, once: taken, they are gone, so a sync
    without a new reading carries none. A reading too old to send (the link was down) is dropped."""
    readings, age_s = list(state.readings), max(0.0, now - state.readings_at)
    state.readings = ()
    if age_s > MAX_READINGS_AGE_S:
        return [], 0.0
    return readings, age_s if readings else 0.0
