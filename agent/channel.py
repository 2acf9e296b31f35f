"""The channel loop: one WebSocket to the coordinator (`GET /agent/v1/channel`), kept open, over which the
coordinator opens streams into this host's jobs (shared/channel.py has the frames and the flow control).

It travels like the sync (the same session: mTLS, and the same proxy or bastion tunnel), and carries no
desired state: a channel that drops ends only the streams open on it, each with its reason (their processes
are killed), and comes back after a wait with backoff and jitter. Each stream kind is a small handler
(agent/stream_exec.py, agent/stream_tcp.py, agent/stream_ssh.py) run as a task of its own, so one slow stream never holds the
reader; a frame that breaks the protocol closes the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from agent.client import CoordinatorClient, protocol_headers, retry_after
from agent.executor import Executor
from agent.stream_exec import run_exec
from agent.stream_ssh import run_ssh
from agent.stream_tcp import run_tcp
from agent.streams import Stream, StreamRefused
from shared import constants as C
from shared.aio import cancel_and_wait
from shared.backoff import Backoff
from shared.channel import (
    MAX_FRAME_BYTES,
    MAX_STREAMS_PER_AGENT,
    BadFrame,
    Close,
    ExecOpen,
    Frame,
    Open,
    SshOpen,
    TcpOpen,
    Window,
    decode_to_agent,
    encode,
    short,
)
from shared.errors import reason_of

log = logging.getLogger("gpuctl.agent")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # a channel up this long starts again from the shortest wait when it drops
HEARTBEAT_S = 20.0  # a ping this often; no pong within half of it closes the channel (a silent partition)

Handler = Callable[[Stream, Any, Executor], Awaitable[int | None]]
HANDLERS: dict[type, Handler] = {ExecOpen: run_exec, TcpOpen: run_tcp, SshOpen: run_ssh}


async def channel_loop(client: CoordinatorClient, executor: Executor, synced: asyncio.Event) -> None:
    """Keep the channel open until cancelled, from the first successful sync on (a coordinator that refuses
    this agent's syncs, busy or not serving its version, hears no channel either). Each opening goes to the
    coordinator the client is at now: after a failover, the one the syncs reach."""
    backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
    await synced.wait()
    while True:
        url = f"{client.base_url}{C.AGENT_PREFIX}/channel"
        opened_at, retry_after_s = time.monotonic(), None
        try:
            async with client.session.ws_connect(
                url, headers=protocol_headers(), heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES
            ) as ws:
                log.info("channel to the coordinator open")
                reason = await Channel(ws, executor).serve()
        except aiohttp.WSServerHandshakeError as exc:  # a refusal: 429 and 503 say when to come back
            reason, retry_after_s = f"the coordinator answered {exc.status}", retry_after(exc.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = reason_of(exc)
        if time.monotonic() - opened_at >= STABLE_AFTER_S:
            backoff.reset()
        delay_s = backoff.delay_s(retry_after_s)
        log.warning("channel to the coordinator down: %s; again in %.1f s", reason, delay_s)
        await asyncio.sleep(delay_s)


class Channel:
    """One open WebSocket and its streams. Not thread-safe: the agent's event loop only."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, executor: Executor) -> None:
        self.ws, self.executor = ws, executor
        self.streams: dict[int, Stream] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    async def send(self, frame: Frame) -> None:
        await self.ws.send_bytes(encode(frame))

    async def serve(self) -> str:
        """Read frames until the channel ends; answers why it ended. Every stream ends with it."""
        try:
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.ERROR:
                    return reason_of(self.ws.exception() or ConnectionError("the connection failed"))
                if message.type is not aiohttp.WSMsgType.BINARY:
                    raise BadFrame(f"a {message.type.name} message; frames are binary")
                self._dispatch(decode_to_agent(message.data))
            return f"the coordinator closed it (code {self.ws.close_code})"
        except BadFrame as exc:
            log.error("channel: %s; closing it", exc)
            await self.ws.close(code=aiohttp.WSCloseCode.PROTOCOL_ERROR, message=b"bad frame")
            return str(exc)
        finally:
            await cancel_and_wait(*self.tasks.values())

    def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Open):
            self._open(frame)
            return
        stream = self.streams.get(frame.stream)
        if stream is None:
            return  # a frame sent before the sender heard that the stream ended
        if isinstance(frame, Close):
            self._forget(frame.stream).cancel()
        elif isinstance(frame, Window):
            stream.grant(frame)
        else:
            stream.deliver(frame)

    def _open(self, frame: Open) -> None:
        if frame.stream in self.streams:
            raise BadFrame(f"open: stream {frame.stream} is open already")
        if len(self.streams) >= MAX_STREAMS_PER_AGENT:  # the coordinator keeps to it, or is broken
            raise BadFrame(f"open: past {MAX_STREAMS_PER_AGENT} streams at once")
        stream = self.streams[frame.stream] = Stream(frame.stream, self.send)
        self.tasks[frame.stream] = asyncio.create_task(
            self._run(stream, frame.what), name=f"stream-{frame.stream}"
        )

    def _forget(self, stream_id: int) -> asyncio.Task[None]:
        self.streams.pop(stream_id, None)
        return self.tasks.pop(stream_id)

    async def _run(self, stream: Stream, what: ExecOpen | TcpOpen | SshOpen) -> None:
        """The stream's handler, then its Close (unless the coordinator closed it: then it is cancelled)."""
        exit_code, error = None, ""
        try:
            exit_code = await HANDLERS[type(what)](stream, what, self.executor)
        except StreamRefused as exc:
            error = str(exc)
        except (OSError, aiohttp.ClientError) as exc:
            error = reason_of(exc)
        except Exception as exc:  # a fault here, or the coordinator broke the protocol: the stream still ends
            log.exception("channel: stream %d failed", stream.id)
            error = reason_of(exc)
        self._forget(stream.id)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await self.send(Close(stream.id, exit_code, short(error)))
