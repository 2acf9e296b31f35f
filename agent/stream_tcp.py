"""A tcp stream (`gpuctl port-forward`, and later services and ssh): a TCP connection from this agent to a
port of a running job, its bytes both ways over the stream, half-closes included.

The job's address is this host's loopback: plain-process jobs and containers alike run on the host's network
(agent/runtime/container.py). Only a job running here is reached, and only while it runs.
"""

from __future__ import annotations

import asyncio

from agent.executor import Executor
from agent.streams import Stream, StreamRefused, running_alloc
from shared.aio import cancel_and_wait
from shared.channel import Data, Eof, TcpOpen

CONNECT_TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"


async def run_tcp(stream: Stream, what: TcpOpen, executor: Executor) -> int | None:
    """Carry the connection until both sides have ended it."""
    running_alloc(executor, what.alloc_id)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(LOOPBACK, what.port)
    except TimeoutError:
        raise StreamRefused(f"port {what.port} of the job: no answer in {CONNECT_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise StreamRefused(f"port {what.port} of the job: {exc.strerror or exc}") from None
    inbound = asyncio.create_task(_to_socket(stream, writer))
    try:
        await _from_socket(stream, reader)
        await inbound
    finally:
        await cancel_and_wait(inbound)
        writer.close()
    return None


async def _from_socket(stream: Stream, reader: asyncio.StreamReader) -> None:
    while True:
        budget = await stream.read_budget()
        data = await reader.read(budget)
        await stream.send_read(data, budget)
        if not data:
            await stream.send_eof()
            return


async def _to_socket(stream: Stream, writer: asyncio.StreamWriter) -> None:
    while True:
        frame = await stream.inbox.get()
        if isinstance(frame, Eof):
            if writer.can_write_eof():
                writer.write_eof()
            return
        if isinstance(frame, Data):
            writer.write(frame.data)
            await writer.drain()
            await stream.passed_on(len(frame.data))
