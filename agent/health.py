"""GPU health: the agent watches its devices for those that must not take new work, and says so with its inventory.

One loop for every vendor: it opens the watch of the host's accelerators (NVML for NVIDIA, amdsmi for AMD,
hl-smi for Intel Gaudi: agent/health_nvidia.py, health_amd.py, health_gaudi.py hold each vendor's rules) and
checks it every `interval_s`. The marks go out with the next sync's inventory (agent/sync.py), never in a
request of their own; the coordinator holds them until the host is undrained (coordinator/health.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.detect.gaudi import Runner
from agent.health_amd import open_amdsmi_watch
from agent.health_gaudi import HlSmiWatch
from agent.health_nvidia import open_nvml_watch
from agent.health_watch import Watch, WatchUnavailable
from agent.state import SharedState
from shared.wire import GpuHealth, Inventory

log = logging.getLogger("gpuctl.agent")

HEALTH_INTERVAL_S = 5.0

OpenWatch = Callable[[], Watch]  # blocking; raises WatchUnavailable


def watch_for(
    inventory: Inventory, nvml: Any = None, amdsmi: Any = None, hl_smi: Runner | None = None
) -> OpenWatch | None:
    """How to open the watch of this host's accelerators: through the library handed in (a test's fake),
    else through the vendor's own for the inventory's real devices; None when there is nothing to watch
    (no GPUs, or simulated ones). A host has one vendor's devices (agent/detect keeps the first found)."""
    if nvml is not None:
        return lambda: open_nvml_watch(nvml)
    if amdsmi is not None:
        return lambda: open_amdsmi_watch(amdsmi)
    vendors = {g.vendor for g in inventory.gpus if not g.simulated}
    if hl_smi is not None or "intel" in vendors:
        return lambda: HlSmiWatch(inventory.gpus, hl_smi)
    if "nvidia" in vendors:
        return open_nvml_watch
    if "amd" in vendors:
        return open_amdsmi_watch
    return None


async def open_watch(opener: OpenWatch) -> Watch | None:
    """The open watch, which health and (for NVML) readings share; None, said once, when the vendor's library
    cannot start: nothing is watched then."""
    try:
        return await asyncio.to_thread(opener)
    except WatchUnavailable as err:
        log.warning("GPU health is not watched: %s", err)
        return None


async def health_loop(watch: Watch, state: SharedState, interval_s: float = HEALTH_INTERVAL_S) -> None:
    """Forever: every `interval_s`, read the devices' health; a change goes out with the next sync. The caller
    closes the watch."""
    while True:
        marks = _of_inventory(await asyncio.to_thread(watch.check), state.inventory)
        if marks != state.unhealthy:
            for mark in marks:
                if mark not in state.unhealthy:
                    log.error("GPU %d unhealthy: %s; its block takes no new work", mark.index, mark.reason)
            state.unhealthy = marks
            state.local_changed.set()
        await asyncio.sleep(interval_s)


def _of_inventory(marks: tuple[GpuHealth, ...], inventory: Inventory | None) -> tuple[GpuHealth, ...]:
    """The marks of devices the inventory has: the coordinator refuses a mark naming any other (an APU's
    integrated GPU, which amdsmi enumerates but detection leaves out)."""
    indices = {g.index for g in inventory.gpus} if inventory is not None else set()
    return tuple(m for m in marks if m.index in indices)
