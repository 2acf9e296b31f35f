"""`gpuctl exec` into a container job, through the engine's exec API: the command runs in the job's container
(its user, working directory and environment are the image's and the job's), over the connection the engine
hands back. Without a terminal, the engine frames stdout and stderr on it (8-byte headers: stream, size);
with one, the bytes are the terminal's, and a resize is the engine's `exec_resize`.

The engine's client is blocking: its calls run in threads; the hijacked socket itself is read and written
on the agent's loop. When the stream is cut, the command is killed by its host pid, with its session (an exec has no stop call).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import docker

from agent.runtime.container import container_name
from agent.streams import Stream, StreamRefused, kill_session
from shared.aio import cancel_and_wait
from shared.channel import EXEC_STDERR, EXEC_STDOUT, Data, Eof, ExecOpen, Resize

HEADER = struct.Struct(">BxxxL")  # the engine's frame of a non-terminal exec's output: stream (1, 2), size


async def run_container_exec(stream: Stream, what: ExecOpen, client: docker.DockerClient) -> int | None:
    """Run the command to its end; answers its exit code."""
    api = client.api
    try:
        created = await asyncio.to_thread(
            api.exec_create, container_name(what.alloc_id), list(what.argv), stdin=True, tty=what.tty
        )
    except docker.errors.APIError as exc:
        raise StreamRefused(f"the engine refused the exec: {exc.explanation or exc}") from None
    exec_id = created["Id"]
    raw: Any = await asyncio.to_thread(api.exec_start, exec_id, tty=what.tty, socket=True)
    sock: socket.socket = raw._sock  # the engine's hijacked connection, under docker-py's wrapper
    sock.setblocking(False)
    if what.tty:
        await _resize(api, exec_id, what.rows, what.cols)
    feeder = asyncio.create_task(_feed(stream, sock, api, exec_id))
    try:
        await (_pump_raw(stream, sock) if what.tty else _pump_framed(stream, sock))
        inspected = await asyncio.to_thread(api.exec_inspect, exec_id)
        return int(inspected["ExitCode"]) if inspected.get("ExitCode") is not None else None
    except BaseException:
        await _kill(api, exec_id)
        raise
    finally:
        await cancel_and_wait(feeder)
        raw.close()
        sock.close()


async def _pump_raw(stream: Stream, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while True:
        budget = await stream.read_budget()
        data = await loop.sock_recv(sock, budget)
        await stream.send_read(data, budget, EXEC_STDOUT)
        if not data:
            return


async def _pump_framed(stream: Stream, sock: socket.socket) -> None:
    """Unframe the engine's stdout/stderr; each payload goes on in pieces that the credit allows."""
    loop = asyncio.get_running_loop()
    while (head := await _read_exactly(loop, sock, HEADER.size)) is not None:
        kind, left = HEADER.unpack(head)
        fd = EXEC_STDERR if kind == 2 else EXEC_STDOUT
        while left:
            budget = await stream.read_budget()
            data = await loop.sock_recv(sock, min(budget, left))
            if not data:
                await stream.send_read(b"", budget)
                return
            await stream.send_read(data, budget, fd)
            left -= len(data)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


async def _feed(stream: Stream, sock: socket.socket, api: Any, exec_id: str) -> None:
    loop = asyncio.get_running_loop()
    while True:
        frame = await stream.inbox.get()
        if isinstance(frame, Resize):
            await _resize(api, exec_id, *stream.take_size())
        elif isinstance(frame, Eof):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        elif isinstance(frame, Data):
            await loop.sock_sendall(sock, frame.data)
            await stream.passed_on(len(frame.data))


async def _resize(api: Any, exec_id: str, rows: int, cols: int) -> None:
    with contextlib.suppress(docker.errors.APIError):  # the exec may have ended meanwhile
        await asyncio.to_thread(api.exec_resize, exec_id, height=rows, width=cols)


async def _kill(api: Any, exec_id: str) -> None:
    """The exec's process and its session, by its pid on this host (the engine reports it). Idempotent."""
    with contextlib.suppress(docker.errors.APIError, KeyError):
        inspected = await asyncio.to_thread(api.exec_inspect, exec_id)
        if inspected["Running"] and inspected["Pid"] > 0:  # an ended one's pid may be another's now
            kill_session(int(inspected["Pid"]))
