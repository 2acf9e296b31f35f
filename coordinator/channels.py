"""The coordinator's end of the agents' channels (shared/channel.py): one WebSocket per agent, the streams
open on it, and the relay of each stream to the user's connection that asked for it.

An agent is untrusted: each frame it sends is decoded strictly, and one that does not decode, names no
stream this side opened in the right way, or sends past its credit closes that agent's channel (and only
its). Memory stays bounded per stream by credit both ways on both legs: the agent may send no more than the
window this side granted, granted again once the bytes went to the user, who in turn grants what they wrote
out; the user may send no more than a window, granted again once it went on to the agent. So the user's
connection is read all the time (their pongs and grants with it), and a user who pauses reading is never
cut by the heartbeat, while one whose connection died is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from shared.aio import cancel_and_wait
from shared.channel import (
    MAX_STREAMS_PER_AGENT,
    USER_WINDOW_BYTES,
    BadFrame,
    Close,
    Data,
    Eof,
    ExecOpen,
    Frame,
    FromAgent,
    Open,
    RecvWindow,
    Resize,
    SendCredit,
    SshOpen,
    TcpOpen,
    Window,
    decode_from_agent,
    decode_to_agent,
    encode,
)

log = logging.getLogger("gpuctl.coordinator")


class NoChannel(Exception):
    """The host's agent has no channel open, or no room for another stream; one line."""


class RelayStream:
    """One stream on an agent's channel, as the coordinator relays it."""

    def __init__(self, channel: AgentChannel, stream_id: int) -> None:
        self.channel, self.id = channel, stream_id
        self.credit = SendCredit()  # toward the agent
        self.window = RecvWindow()  # from the agent
        self.outbox: asyncio.Queue[FromAgent] = asyncio.Queue()  # bounded: the window, one Eof, one Close
        self.ended = False  # the agent sent Eof
        self.user_credit = SendCredit(USER_WINDOW_BYTES)  # toward the user
        self.user_window = RecvWindow()  # from the user
        self.inbox: asyncio.Queue[Data | Eof] = asyncio.Queue()  # the user's, bounded: the window, one Eof

    def from_agent(self, frame: FromAgent) -> None:
        """Raises BadFrame past the window or the credit, or for Data or Eof after an Eof."""
        if isinstance(frame, Window):
            self.credit.grant(frame.credit)
            return
        if self.ended and not isinstance(frame, Close):
            raise BadFrame(f"stream {self.id}: {type(frame).__name__.lower()} after its eof")
        if isinstance(frame, Data):
            self.window.received(len(frame.data))
        elif isinstance(frame, Eof):
            self.ended = True
        self.outbox.put_nowait(frame)

    async def send_data(self, data: bytes) -> None:
        async for piece in self.credit.pieces(data):
            await self.channel.send(Data(self.id, piece))


class AgentChannel:
    """One agent's WebSocket and the streams open on it. Not thread-safe: the event loop only."""

    def __init__(self, host_id: str, ws: web.WebSocketResponse) -> None:
        self.host_id, self.ws = host_id, ws
        self.streams: dict[int, RelayStream] = {}
        self._next_id = 1
        self.ended = ""  # why, once it has

    async def send(self, frame: Frame) -> None:
        if self.ended:
            raise ConnectionResetError(self.ended)
        await self.ws.send_bytes(encode(frame))

    def open(self) -> RelayStream:
        """A new stream (its Open is the caller's to send). Raises NoChannel when there is no room."""
        if self.ended:
            raise NoChannel(f"host {self.host_id}: its channel dropped ({self.ended})")
        if len(self.streams) >= MAX_STREAMS_PER_AGENT:
            raise NoChannel(f"host {self.host_id} has {MAX_STREAMS_PER_AGENT} streams open; try again later")
        stream_id, self._next_id = self._next_id, self._next_id % (2**31 - 1) + 1
        stream = self.streams[stream_id] = RelayStream(self, stream_id)
        return stream

    def forget(self, stream: RelayStream) -> None:
        self.streams.pop(stream.id, None)

    async def serve(self) -> str:
        """Read the agent's frames until its channel ends; answers why. Every stream on it then ends with
        that reason."""
        reason = "the agent closed it"
        try:
            async for message in self.ws:
                if message.type is not WSMsgType.BINARY:
                    raise BadFrame(f"a {message.type.name} message; frames are binary")
                frame = decode_from_agent(message.data)
                stream = self.streams.get(frame.stream)
                if stream is not None:  # else a frame sent before the agent heard that the stream ended
                    stream.from_agent(frame)
                    if isinstance(frame, Close):
                        self.forget(stream)
        except BadFrame as exc:
            reason = f"it sent {exc}"
            log.warning("host %s: channel closed: %s", self.host_id, reason)
            await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"bad frame")
        finally:
            self.end(reason)
        return reason

    def end(self, reason: str) -> None:
        """Every stream ends with `reason`. Idempotent."""
        if self.ended:
            return
        self.ended = reason
        for stream in self.streams.values():
            stream.outbox.put_nowait(
                Close(stream.id, error=f"host {self.host_id}: channel dropped: {reason}")
            )
        self.streams.clear()


class Channels:
    """The open channel of each host, by host id: one each, the newest wins."""

    def __init__(self) -> None:
        self.by_host: dict[str, AgentChannel] = {}

    def get(self, host_id: str) -> AgentChannel:
        channel = self.by_host.get(host_id)
        if channel is None or channel.ended:
            raise NoChannel(f"host {host_id} has no channel open (its agent is reconnecting, or older)")
        return channel

    async def close_all(self) -> None:
        """The coordinator is stopping: every agent comes back to the next one."""
        for channel in list(self.by_host.values()):
            channel.end("the coordinator is stopping")
            await channel.ws.close(code=WSCloseCode.GOING_AWAY, message=b"stopping")

    async def serve(self, host_id: str, ws: web.WebSocketResponse) -> None:
        channel = AgentChannel(host_id, ws)
        old, self.by_host[host_id] = self.by_host.get(host_id), channel
        if old is not None:
            old.end("the agent opened a new one")
            await old.ws.close(code=WSCloseCode.GOING_AWAY, message=b"replaced")
        log.info("host %s: channel open", host_id)
        try:
            reason = await channel.serve()
        finally:
            channel.end("the coordinator is stopping")
            if self.by_host.get(host_id) is channel:
                del self.by_host[host_id]
        log.info("host %s: channel closed: %s", host_id, reason)


async def relay(
    stream: RelayStream, user: web.WebSocketResponse, opening: ExecOpen | TcpOpen | SshOpen
) -> Close:
    """Open the stream on the agent, then carry it both ways until it ends; answers its Close (sent to the
    user too). A user who goes away closes the stream on the agent (its command is killed), also when their
    connection is lost and aiohttp cancels this handler."""
    channel, close = stream.channel, None
    tasks: list[asyncio.Task[Close | None]] = []
    try:
        await channel.send(Open(stream.id, opening))
        tasks = [
            asyncio.create_task(_to_user(stream, user)),
            asyncio.create_task(_from_user(stream, user)),
            asyncio.create_task(_to_agent(stream, user)),
        ]
        while close is None:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            tasks = [task for task in tasks if task not in done]
            close = next((task.result() for task in done if task.result() is not None), None)
        return close
    finally:
        for task in tasks:
            await cancel_and_wait(task)
        channel.forget(stream)
        if close is None:  # cancelled or failed: else the agent keeps the stream, and its command, for ever
            with contextlib.suppress(ConnectionError):
                await channel.send(Close(stream.id, error="the coordinator dropped the stream"))


async def _to_user(stream: RelayStream, user: web.WebSocketResponse) -> Close:
    """The agent's frames to the user as the user's credit allows, granting each Data back to the agent
    once sent (the user's pace thus reaches the agent). Ends with the stream's Close."""
    while True:
        frame = await stream.outbox.get()
        if isinstance(frame, Data):
            async for piece in stream.user_credit.pieces(frame.data):
                await _to(user, Data(1, piece, frame.fd))
            stream.window.passed_on(len(frame.data))
            with contextlib.suppress(ConnectionError):
                await stream.channel.send(Window(stream.id, len(frame.data)))
        elif isinstance(frame, Eof | Close):
            await _to(user, _renumbered(frame, 1))
        if isinstance(frame, Close):
            return frame


async def _from_user(stream: RelayStream, user: web.WebSocketResponse) -> Close:
    """Read the user's frames as they come, whatever the agent's credit: their Data waits in the inbox
    (a window at most), their grants and resizes take effect at once. When the user goes (or sends what
    they may not), the stream closes on the agent; answers that Close, which the relay ends with."""
    close, ended = Close(stream.id), False
    try:
        async for message in user:
            if message.type is not WSMsgType.BINARY:
                break
            frame = decode_to_agent(message.data)
            if ended and isinstance(frame, Data | Eof):  # the agent would close its whole channel for it
                raise BadFrame(f"{type(frame).__name__.lower()} after its eof")
            if isinstance(frame, Window):
                stream.user_credit.grant(frame.credit)
            elif isinstance(frame, Data | Eof):
                if isinstance(frame, Data):
                    stream.user_window.received(len(frame.data))
                ended = ended or isinstance(frame, Eof)
                stream.inbox.put_nowait(frame)
            elif isinstance(frame, Resize):
                await stream.channel.send(_renumbered(frame, stream.id))
            elif isinstance(frame, Close):
                break
    except BadFrame as exc:
        close = Close(stream.id, error=f"the client sent {exc}")
    with contextlib.suppress(ConnectionError):
        await stream.channel.send(close)
    close = Close(1, error=close.error or "the client went away")
    await _to(user, close)
    return close


async def _to_agent(stream: RelayStream, user: web.WebSocketResponse) -> None:
    """The user's Data and Eof to the agent as its credit allows, granting the user back what went on."""
    with contextlib.suppress(ConnectionError):
        while True:
            frame = await stream.inbox.get()
            if isinstance(frame, Eof):
                await stream.channel.send(Eof(stream.id))
                return
            await stream.send_data(frame.data)
            stream.user_window.passed_on(len(frame.data))
            await _to(user, Window(1, len(frame.data)))


async def _to(user: web.WebSocketResponse, frame: Data | Eof | Close | Resize | Window) -> None:
    """A frame to the user; one whose connection is gone gets nothing (their reader sees them go)."""
    with contextlib.suppress(ConnectionError):
        await user.send_bytes(encode(frame))


def _renumbered(frame: Data | Eof | Close | Resize, stream_id: int) -> Data | Eof | Close | Resize:
    return msgspec.structs.replace(frame, stream=stream_id)
