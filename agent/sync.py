"""The sync loop: one long poll that reports actual state and receives desired state (the heartbeat too).

A local change (a job started or ended) cuts the current poll, or the gap between two syncs, short, so the
coordinator hears it at once (and can answer with the next placement in the same exchange).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path

import msgspec

from agent.client import ApiError, CoordinatorClient, retry_after_of, retryable
from agent.diskguard import with_disk_problem
from agent.executor import Executor
from agent.identity import check_not_expired
from agent.readings import take_readings
from agent.state import SharedState
from shared import constants as C
from shared.aio import cancel_and_wait
from shared.backoff import Backoff
from shared.errors import reason_of
from shared.sdnotify import notify
from shared.wire import Inventory, SyncRequest, SyncResponse, generation_of

log = logging.getLogger("gpuctl.agent")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
COALESCE_S = 0.01  # after a local change, how long to gather more (eight jobs ending together) into one sync


class Revoked(Exception):
    """The coordinator refuses this agent for good (401/403): stop pulling work."""


def revoked(exc: BaseException) -> bool:
    """Only 401 and 403 say this host is no longer wanted. Any other refusal (a 400 naming a field of its
    inventory or statuses) is about what it sent: its jobs keep running and it tries again, while the
    coordinator shows the reason on the host."""
    return isinstance(exc, ApiError) and exc.status in (401, 403)


async def sync_loop(
    client: CoordinatorClient, executor: Executor, inventory: Inventory, state: SharedState, cert_file: Path
) -> None:
    """Sync until cancelled or refused. The inventory sent is `state.inventory` (set to `inventory` if
    empty), read afresh for every request, so a re-detected inventory goes out with the next sync."""
    if state.inventory is None:
        state.inventory = inventory
    poll_timeout_s, gap_s, backoff = (
        C.POLL_TIMEOUT_S,
        C.SYNC_INTERVAL_S,
        Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S),
    )
    ready = False
    while True:
        state.local_changed.clear()
        inventory = msgspec.structs.replace(
            with_disk_problem(state.inventory, state.disk_problem), unhealthy=state.unhealthy
        )
        generation = generation_of(inventory)
        link_error, link_error_age_s = client.transport.link_error()
        readings, readings_age_s = take_readings(state, time.monotonic())
        request = SyncRequest(
            agent_version=C.AGENT_VERSION,
            inventory_generation=generation,
            inventory=inventory if state.coordinator_generation != generation else None,
            allocations=executor.statuses(),
            desired_index=state.desired_index,
            transport=client.transport.route,
            link_error=link_error,
            link_error_age_s=link_error_age_s,
            readings=readings,
            readings_age_s=readings_age_s,
        )
        deadline_s = read_deadline_s(poll_timeout_s)
        try:
            response = await _poll(client, request, deadline_s, state)
        except Exception as exc:
            await _after_failure(exc, deadline_s, backoff, state, cert_file)
            continue
        backoff.reset()
        if response is not None:
            _apply(response, state)
            if not ready:
                notify("READY=1")  # the first sync is through: systemd counts the agent as started
                ready = True
            poll_timeout_s, gap_s = response.poll_timeout_s, response.sync_interval_s
        await _pause(gap_s * random.uniform(0.8, 1.2), state.local_changed)


async def _pause(gap_s: float, local_changed: asyncio.Event) -> None:
    """The gap before the next sync: `gap_s` (the coordinator's interval) while there is nothing new to say,
    so an answer that comes at once never turns into a busy loop; COALESCE_S once something changed here.

    The full gap after every answer used to hold each start and exit back: with 8 one-second-or-less jobs a
    host, 0.25 s of every ~0.6 s cycle went to it (bench section c, one host, 300 `true` tasks)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(gap_s):
            await local_changed.wait()
            await asyncio.sleep(COALESCE_S)


def read_deadline_s(poll_timeout_s: float) -> float:
    """How long to wait for a long poll's answer: the coordinator's longest hold, plus a margin. A silent
    partition (no reset, no answer) is noticed within this, under two poll intervals."""
    return poll_timeout_s * (1 + C.POLL_JITTER_FRACTION) + C.SYNC_READ_MARGIN_S


def failure_reason(exc: BaseException, deadline_s: float) -> str:
    """One line for the log and `gpuctl hosts`: never empty, and a timeout says what it means."""
    if isinstance(exc, TimeoutError):
        return f"no answer in {deadline_s:.0f} s (coordinator unreachable?)"
    return reason_of(exc)


async def _after_failure(
    exc: Exception, deadline_s: float, backoff: Backoff, state: SharedState, cert_file: Path
) -> None:
    """Say why in one line, then wait (with jitter, at least the coordinator's Retry-After); or raise
    Revoked for a verdict."""
    reason = failure_reason(exc, deadline_s)
    state.last_error = reason
    if revoked(exc):
        log.error("sync refused: %s; this agent stops pulling work", reason)
        raise Revoked(reason) from exc
    if not retryable(exc):  # a verdict on what this sync said (an inventory, a status), not on this host
        delay_s = backoff.delay_s(BACKOFF_MAX_S)
        log.error("sync refused: %s; retrying in %.1f s, or at the next local change", reason, delay_s)
        with contextlib.suppress(TimeoutError):  # a new inventory may be what the refusal asks for
            await asyncio.wait_for(state.local_changed.wait(), delay_s)
        return
    check_not_expired(cert_file)  # a host offline past its certificate's life must join again
    delay_s = backoff.delay_s(retry_after_of(exc))
    level = logging.ERROR if isinstance(exc, ApiError) and exc.status == 426 else logging.WARNING
    log.log(level, "sync failed: %s; retrying in %.1f s", reason, delay_s)
    await asyncio.sleep(delay_s)


async def _poll(
    client: CoordinatorClient, request: SyncRequest, deadline_s: float, state: SharedState
) -> SyncResponse | None:
    """The long poll, or None if a local change came first (then the poll is abandoned)."""
    poll = asyncio.create_task(client.sync(request, timeout_s=deadline_s))
    changed = asyncio.create_task(state.local_changed.wait())
    try:
        await asyncio.wait({poll, changed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(poll, changed)
    return None if poll.cancelled() else poll.result()


def _apply(response: SyncResponse, state: SharedState) -> None:
    state.last_error = ""
    state.last_sync_at = time.monotonic()
    state.host_id = response.host_id
    state.coordinator_generation = response.inventory_generation
    state.log_chunk_max_bytes = max(1024, min(response.log_chunk_max_bytes, C.LOG_CHUNK_MAX_BYTES))
    state.metrics_interval_s = response.metrics_interval_s
    if response.index != state.desired_index:
        state.desired = response.allocations
        state.desired_index = response.index
        state.desired_changed.set()
    state.synced_once.set()
