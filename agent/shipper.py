"""The log shipper: sends each allocation's spool to the coordinator by byte offset, in bounded chunks.

Idempotent by offset: a chunk sent twice lands once, and the coordinator's answer (the acknowledged size)
is where the next chunk starts, also after a restart of either side.
"""

from __future__ import annotations

import asyncio
import logging

from agent import logcap
from agent.client import CoordinatorClient, retry_after_of, retryable
from agent.executor import Executor, LocalAlloc
from agent.state import SharedState
from shared.backoff import Backoff
from shared.errors import reason_of

log = logging.getLogger("gpuctl.agent")

SHIP_INTERVAL_S = 0.2
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0


async def ship_loop(client: CoordinatorClient, executor: Executor, state: SharedState) -> None:
    backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
    while True:
        state.logs_written.clear()
        sent_any = False
        for local in executor.snapshot():
            try:
                if await _ship_one(client, executor, local, state.log_chunk_max_bytes):
                    sent_any = True
                    backoff.reset()
            except Exception as exc:
                if not retryable(exc) and getattr(exc, "status", 0) != 404:
                    raise
                delay_s = backoff.delay_s(retry_after_of(exc))
                log.warning(
                    "log shipping for %s failed: %s; retrying in %.1f s",
                    local.spec.id,
                    reason_of(exc),
                    delay_s,
                )
                await asyncio.sleep(delay_s)
        if not sent_any:
            try:
                async with asyncio.timeout(SHIP_INTERVAL_S):
                    await state.logs_written.wait()
            except TimeoutError:
                pass


async def _ship_one(
    client: CoordinatorClient, executor: Executor, local: LocalAlloc, chunk_bytes: int
) -> bool:
    """Send one chunk if there is unsent output. True if something was sent."""
    size = local.stream_size()
    if size <= local.acked:
        return False
    data = _read_chunk(local, min(size - local.acked, chunk_bytes))
    acked = await client.post_log(local.spec.id, local.acked, data)
    executor.record_acked(local.spec.id, acked)
    return True


def _read_chunk(local: LocalAlloc, max_bytes: int) -> bytes:
    """A local read of at most one chunk of the log stream: short enough to do on the event loop."""
    ended = local.observed.state.terminal
    return logcap.read_stream(
        local.log_file, local.acked, max_bytes, local.log_size(), local.spec.log_cap_bytes, ended
    )
