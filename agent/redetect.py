"""Re-detection: on SIGHUP and every few minutes the agent detects its devices again.

A changed inventory replaces `SharedState.inventory` and wakes the sync loop, which sends it because its
generation now differs from the coordinator's. Until the coordinator has stored it, it places nothing new
on this host (coordinator/service.py). Running allocations keep the devices they were given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import msgspec

from agent.state import SharedState
from shared.wire import Inventory, generation_of

log = logging.getLogger("gpuctl.agent")

REDETECT_INTERVAL_S = 300.0
REDETECT_JITTER_FRACTION = 0.1  # a fleet started together must not re-detect in step
FAILED = "re-detection failed:"

Detect = Callable[[], Inventory]


async def redetect_loop(
    detect: Detect,
    state: SharedState,
    interval_s: float = REDETECT_INTERVAL_S,
    on_change: Callable[[Inventory], None] = lambda inventory: None,
) -> None:
    """Forever: wait for `state.redetect_requested` (SIGHUP) or about `interval_s`, then `redetect_once`."""
    while True:
        wait_s = interval_s * random.uniform(1 - REDETECT_JITTER_FRACTION, 1 + REDETECT_JITTER_FRACTION)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await state.redetect_requested.wait()
        state.redetect_requested.clear()
        if await redetect_once(detect, state):
            assert state.inventory is not None
            on_change(state.inventory)


async def redetect_once(detect: Detect, state: SharedState) -> bool:
    """Detect again (in a worker thread: NVML and hl-smi block) and publish the result if its generation
    differs. Returns True when `state.inventory` changed.

    A detection that raises (say a GPU was lost and `blocks: 2` no longer divides the rest) keeps the last
    good inventory and adds a warning saying so, which `gpuctl hosts` shows; the error is logged each time.
    Not safe concurrently with itself.
    """
    current = state.inventory
    assert current is not None, "the first detection happens before the loops start"
    try:
        fresh = await asyncio.to_thread(detect)
    except Exception as exc:  # a detector bug must not stop the agent: report it where the user looks
        log.error("re-detection failed: %s; the last good inventory stays", exc)
        fresh = _with_failure(current, f"{FAILED} {exc}; the inventory shown is the last good one")
    if generation_of(fresh) == generation_of(current):
        log.debug("re-detection: no change")
        return False
    log.warning(
        "inventory changed (generation %s → %s): %d → %d GPUs, %d → %d blocks%s",
        generation_of(current),
        generation_of(fresh),
        len(current.gpus),
        len(fresh.gpus),
        len(current.blocks),
        len(fresh.blocks),
        "".join(f"; {w}" for w in fresh.warnings if w not in current.warnings),
    )
    state.inventory = fresh
    state.local_changed.set()
    return True


def _with_failure(inventory: Inventory, warning: str) -> Inventory:
    """The inventory with one re-detection warning in place of any earlier one."""
    kept = tuple(w for w in inventory.warnings if not w.startswith(FAILED))
    return msgspec.structs.replace(inventory, warnings=(*kept, warning))
