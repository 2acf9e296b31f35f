"""One stream of the channel, as a stream's handler (exec, tcp) sees it: what came in, and sending with
credit. The channel (agent/channel.py) feeds `deliver` and `grant` from its one reader; the handler reads
`inbox` and calls `send_data`, `passed_on`, `send_eof`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

from agent.executor import Executor, LocalAlloc
from shared.channel import (
    MAX_DATA_BYTES,
    BadFrame,
    Data,
    Eof,
    Frame,
    RecvWindow,
    Resize,
    SendCredit,
    Window,
)
from shared.states import AllocState

Inbound = Data | Eof | Resize


class StreamRefused(Exception):
    """The stream cannot open (no such allocation here, a port nobody listens on); one line for the user."""


class Stream:
    """Not thread-safe: the agent's event loop only."""

    def __init__(self, stream_id: int, send: Callable[[Frame], Awaitable[None]]) -> None:
        self.id = stream_id
        self._send = send
        self.credit = SendCredit()
        self.window = RecvWindow()
        # Bounded: Data within the window, one Eof, and one Resize at a time (the latest size wins)
        self.inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self.size: tuple[int, int] | None = None  # the terminal size a queued Resize stands for
        self.ended = False  # an Eof came

    def deliver(self, frame: Inbound) -> None:
        """A frame for this stream, from the channel's reader. Raises BadFrame past the window, or for Data
        or a second Eof after an Eof."""
        if isinstance(frame, Resize):
            queued, self.size = self.size is not None, (frame.rows, frame.cols)
            if queued:
                return
        elif self.ended:
            raise BadFrame(f"stream {self.id}: {type(frame).__name__.lower()} after its eof")
        elif isinstance(frame, Eof):
            self.ended = True
        else:
            self.window.received(len(frame.data))
        self.inbox.put_nowait(frame)

    def take_size(self) -> tuple[int, int]:
        """The latest terminal size, for the Resize just taken from the inbox."""
        size, self.size = self.size, None
        assert size is not None
        return size

    def grant(self, frame: Window) -> None:
        self.credit.grant(frame.credit)

    async def send_data(self, data: bytes, fd: int = 0) -> None:
        """Send `data`, in frames as the peer's credit allows (waits for it)."""
        async for piece in self.credit.pieces(data):
            await self._send(Data(self.id, piece, fd))

    async def read_budget(self) -> int:
        """Wait for credit, and take up to a frame's worth of it: read at most this much, then
        `send_read` what was read (an unsent rest goes back)."""
        return await self.credit.take(MAX_DATA_BYTES)

    async def send_read(self, data: bytes, budget: int, fd: int = 0) -> None:
        if len(data) > budget:
            raise BadFrame(f"read {len(data)} bytes on a budget of {budget}")
        self.credit.give_back(budget - len(data))
        if data:
            await self._send(Data(self.id, data, fd))

    async def passed_on(self, size: int) -> None:
        """`size` bytes of received Data were written where they go: the peer may send that much more."""
        self.window.passed_on(size)
        await self._send(Window(self.id, size))

    async def send_eof(self) -> None:
        await self._send(Eof(self.id))


def running_alloc(executor: Executor, alloc_id: str) -> LocalAlloc:
    """The allocation, if it runs on this host now. Raises StreamRefused."""
    local = executor.allocs.get(alloc_id)
    if local is None:
        raise StreamRefused(f"allocation {alloc_id} is not on this host")
    if local.observed.state is not AllocState.RUNNING or local.stop_asked_at is not None:
        raise StreamRefused(f"allocation {alloc_id} is not running ({local.observed.state.value})")
    return local


def kill_session(pid: int) -> None:
    """A command whose stream was cut dies (`pid`, by its number on this host, still running: its number
    is not another's), with whatever it started in its session: an interactive shell gives each of its jobs
    a process group of its own. A pass that finds none left ends it. Idempotent."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)  # it may lead no session (an engine's exec)
    for _ in range(5):
        killed = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getsid(int(entry)) == pid:
                        os.kill(int(entry), signal.SIGKILL)
                        killed += 1
        if not killed:
            return
