"""A tcp stream (`gpuctl port-forward`, and later services and ssh): a TCP connection from this agent to a
port of a running job, its bytes both ways over the stream, half-closes included.

The job's address is this host's loopback: plain-process jobs and containers alike run on the host's network
(agent/runtime/container.py). Only a job running here is reached, only while it runs, and only on a port that
one of its own processes listens on (agent/job_sockets.py): the loopback is every job's and the host's.
"""

from __future__ import annotations

import asyncio

import docker

from agent.executor import Executor, LocalAlloc
from agent.job_sockets import job_listens, own_cgroups
from agent.runtime.container import container_name
from agent.stream_exec import docker_client, job_context
from agent.streams import Stream, StreamRefused, running_alloc
from shared.aio import cancel_and_wait
from shared.channel import Data, Eof, TcpOpen

CONNECT_TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"


async def run_tcp(stream: Stream, what: TcpOpen, executor: Executor) -> int | None:
    """Carry the connection until both sides have ended it."""
    local = running_alloc(executor, what.alloc_id)
    if not await _job_listens(local, executor, what.port):
        raise StreamRefused("no process of the job listens on this port")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(LOOPBACK, what.port)
    except TimeoutError:
        raise StreamRefused(f"no answer on this port in {CONNECT_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise StreamRefused(f"this port of the job: {exc.strerror or exc}") from None
    inbound = asyncio.create_task(_to_socket(stream, writer))
    try:
        await _from_socket(stream, reader)
        await inbound
    finally:
        await cancel_and_wait(inbound)
        writer.close()
    return None


async def _job_listens(local: LocalAlloc, executor: Executor, port: int) -> bool:
    """A container's processes are those of its own cgroup; a plain process's, those of the job's cgroups
    (none when the agent confines no job: then the tree under its supervisor)."""
    if local.spec.spec.image:
        api = docker_client(executor).api
        try:
            inspected = await asyncio.to_thread(api.inspect_container, container_name(local.spec.id))
        except docker.errors.APIError as exc:
            raise StreamRefused(
                f"the engine cannot find the job's container: {exc.explanation or exc}"
            ) from None
        pid = int(inspected["State"]["Pid"])
        return await asyncio.to_thread(lambda: job_listens(pid, own_cgroups(pid), port))
    context = job_context(local.dir)
    uid = int(context.user.split(":")[0]) if context.user else None  # none: the agent's own, or root
    try:
        supervisor = int((local.dir / "shim.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return await asyncio.to_thread(job_listens, supervisor, context.cgroups, port, uid)


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
