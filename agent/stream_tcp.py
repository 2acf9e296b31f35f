"""A tcp stream (`gpuctl port-forward`, and later services and ssh): a TCP connection from this agent to a
port of a running job, its bytes both ways over the stream, half-closes included.

The job's address is this host's loopback for a plain-process job (it shares the host's network); a
container job's will be its container's address on the engine's network (not yet). Only a job running here
is reached.
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
    local = running_alloc(executor, what.alloc_id)
    if local.spec.spec.image:
        raise StreamRefused("port-forward to a container job is not supported yet; plain-process jobs only")
    host = LOOPBACK
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, what.port)
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
