"""The sync loop: one long poll that reports actual state and receives desired state (the heartbeat too).

A local change (a job ended) cuts the current poll short, so the coordinator hears it at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from agent.client import CoordinatorClient, retryable
from agent.diskguard import with_disk_problem
from agent.executor import Executor
from agent.identity import check_not_expired
from agent.state import SharedState
from shared import constants as C
from shared.aio import cancel_and_wait
from shared.sdnotify import notify
from shared.wire import Inventory, SyncRequest, SyncResponse, generation_of

log = logging.getLogger("gpuctl.agent")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


class Revoked(Exception):
    """The coordinator refuses this agent for good (401/403): stop pulling work."""


async def sync_loop(
    client: CoordinatorClient, executor: Executor, inventory: Inventory, state: SharedState, cert_file: Path
) -> None:
    """Sync until cancelled or refused. The inventory sent is `state.inventory` (set to `inventory` if
    empty), read afresh for every request, so a re-detected inventory goes out with the next sync."""
    if state.inventory is None:
        state.inventory = inventory
    poll_timeout_s, gap_s, backoff_s = C.POLL_TIMEOUT_S, C.SYNC_INTERVAL_S, BACKOFF_MIN_S
    ready = False
    while True:
        state.local_changed.clear()
        inventory = with_disk_problem(state.inventory, state.disk_problem)
        generation = generation_of(inventory)
        request = SyncRequest(
            agent_version=C.AGENT_VERSION,
            inventory_generation=generation,
            inventory=inventory if state.coordinator_generation != generation else None,
            allocations=executor.statuses(),
            desired_index=state.desired_index,
        )
        try:
            response = await _poll(client, request, poll_timeout_s, state)
        except Exception as exc:
            if not retryable(exc):
                state.last_error = str(exc)
                log.error("sync refused: %s; this agent stops pulling work", exc)
                raise Revoked(str(exc)) from exc
            state.last_error = str(exc)
            check_not_expired(cert_file)  # a host offline past its certificate's life must join again
            log.warning("sync failed (%s); retrying in %.1f s", exc, backoff_s)
            await asyncio.sleep(backoff_s * random.uniform(0.8, 1.2))
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            continue
        backoff_s = BACKOFF_MIN_S
        if response is not None:
            _apply(response, state)
            if not ready:
                notify("READY=1")  # the first sync is through: systemd counts the agent as started
                ready = True
            poll_timeout_s, gap_s = response.poll_timeout_s, response.sync_interval_s
        await asyncio.sleep(gap_s * random.uniform(0.8, 1.2))


async def _poll(
    client: CoordinatorClient, request: SyncRequest, poll_timeout_s: float, state: SharedState
) -> SyncResponse | None:
    """The long poll, or None if a local change came first (then the poll is abandoned)."""
    poll = asyncio.create_task(client.sync(request, timeout_s=poll_timeout_s * 1.5 + 10))
    changed = asyncio.create_task(state.local_changed.wait())
    try:
        await asyncio.wait({poll, changed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(poll, changed)
    return None if poll.cancelled() else poll.result()


def _apply(response: SyncResponse, state: SharedState) -> None:
    state.last_error = ""
    state.host_id = response.host_id
    state.coordinator_generation = response.inventory_generation
    state.log_chunk_max_bytes = max(1024, min(response.log_chunk_max_bytes, C.LOG_CHUNK_MAX_BYTES))
    if response.index != state.desired_index:
        state.desired = response.allocations
        state.desired_index = response.index
        state.desired_changed.set()
    state.synced_once.set()
