"""The channel: frames that the coordinator and an agent exchange on the agent's one WebSocket
(`GET /agent/v1/channel`), and that the CLI exchanges with the coordinator for one stream (`gpuctl exec`,
`gpuctl port-forward`).

The agent dials out, so the coordinator reaches into a host (a shell in a job, a job's port) over a
connection the host opened. Many streams share the channel: the coordinator opens one with `Open`, naming a
kind (`ExecOpen`, `TcpOpen`, `SshOpen`; a later kind is a new `Open` payload) and a
stream id it chose; `Data`, `Eof`, `Resize` and `Close` then carry the stream's id.

Flow control is by credit, per stream and per direction: each side may send a stream at most WINDOW_BYTES of
`Data` that the other side has not yet granted back with `Window`; the receiver grants bytes once it has
passed them on (written to a process, a socket, the user's connection). A receiver's buffer for a stream
thus never holds more than WINDOW_BYTES, and a stream whose reader is slow stops only itself. A peer that
sends past its credit, a frame that does not decode, or a frame of the wrong direction breaks the protocol:
the receiver closes the whole channel (an agent is untrusted: it never harms the coordinator).

The CLI and the coordinator use the same credit on the user's connection, so that neither ever stops
reading its WebSocket: a ping behind data is read and answered however long the user pauses (aiohttp's
heartbeat cuts a connection whose pongs lag), and a user who is really gone is still found so. Toward the
CLI the window is USER_WINDOW_BYTES: what it holds is the CLI's memory alone (the coordinator grants the
agent once bytes went to the user), and a second window of WINDOW_BYTES in a row halved a download's speed.

Frames travel as binary WebSocket messages in msgpack (`encode`, `decode_*`), validated strictly: every
field bounded, unknown fields refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from msgspec import Meta

WINDOW_BYTES = 256 * 1024  # each side's credit on each stream, at its start
USER_WINDOW_BYTES = 4 * WINDOW_BYTES  # the coordinator's credit toward the CLI, at a stream's start
MAX_DATA_BYTES = 64 * 1024  # of one Data frame: a stream's window holds four
MAX_STREAMS_PER_AGENT = 256  # streams open at once on one agent's channel
MAX_ARGV = 256  # arguments of an exec'd command
MAX_ARG_CHARS = 8192
MAX_ERROR_CHARS = 500
PUBLIC_KEY_PATTERN = r"^ssh-ed25519 [A-Za-z0-9+/]{68}$"  # the key `gpuctl ssh` makes: 32 bytes, its header
MAX_FRAME_BYTES = MAX_DATA_BYTES + 64 * 1024  # a WebSocket message: the largest Data or Open, with room

StreamId = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Credit = Annotated[int, Meta(ge=1, le=WINDOW_BYTES)]
Port = Annotated[int, Meta(ge=1, le=65535)]
TermSize = Annotated[int, Meta(ge=1, le=10_000)]
AllocId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Arg = Annotated[str, Meta(max_length=MAX_ARG_CHARS)]
PublicKey = Annotated[str, Meta(max_length=200, pattern=PUBLIC_KEY_PATTERN)]
ExitCode = Annotated[int, Meta(ge=-(2**31), le=2**32 - 1)]  # negative: killed by that signal

EXEC_STDOUT, EXEC_STDERR = 1, 2  # Data.fd of an exec stream's output; input (stdin, a socket's bytes) is 0


class _Frame(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, tag_field="t"):
    pass


class ExecOpen(_Frame, tag="exec", frozen=True):
    """Run `argv` in the allocation's job: its container, or as its user in its folder with its env."""

    alloc_id: AllocId
    argv: Annotated[tuple[Arg, ...], Meta(min_length=1, max_length=MAX_ARGV)]
    tty: bool = False
    rows: TermSize = 24
    cols: TermSize = 80


class TcpOpen(_Frame, tag="tcp", frozen=True):
    """A TCP connection to `port` of the allocation's job (its container's address, or this host's)."""

    alloc_id: AllocId
    port: Port


class SshOpen(_Frame, tag="ssh", frozen=True):
    """A connection to the sshd of the allocation's dev environment, which first lets `public_key` (the
    user's, `gpuctl ssh`) log in."""

    alloc_id: AllocId
    public_key: PublicKey


class Open(_Frame, tag="open", frozen=True):
    stream: StreamId
    what: ExecOpen | TcpOpen | SshOpen


class Data(_Frame, tag="data", frozen=True):
    stream: StreamId
    data: Annotated[bytes, Meta(min_length=1, max_length=MAX_DATA_BYTES)]
    fd: Annotated[int, Meta(ge=0, le=2)] = 0


class Window(_Frame, tag="window", frozen=True):
    """The sender has passed on `credit` more bytes of the stream's Data: the other side may send them."""

    stream: StreamId
    credit: Credit


class Resize(_Frame, tag="resize", frozen=True):
    stream: StreamId
    rows: TermSize
    cols: TermSize


class Eof(_Frame, tag="eof", frozen=True):
    """No more Data from the sender on this stream (stdin ended; the TCP peer shut its side)."""

    stream: StreamId


class Close(_Frame, tag="close", frozen=True):
    """The stream is over: an exec's exit code, or why it ended (empty: a clean end). Either side may
    send it; the other forgets the stream (and answers nothing)."""

    stream: StreamId
    exit_code: ExitCode | None = None
    error: Annotated[str, Meta(max_length=MAX_ERROR_CHARS)] = ""


ToAgent = Open | Data | Window | Resize | Eof | Close
FromAgent = Data | Window | Eof | Close
Frame = ToAgent

_encoder = msgspec.msgpack.Encoder()
_to_agent = msgspec.msgpack.Decoder(ToAgent)
_from_agent = msgspec.msgpack.Decoder(FromAgent)


class BadFrame(ValueError):
    """A frame that does not decode, or breaks the protocol; one line."""


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_to_agent(message: bytes) -> ToAgent:
    """A frame the coordinator (or the CLI, through it) sent. Raises BadFrame."""
    try:
        return _to_agent.decode(message)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadFrame(f"bad frame: {exc}") from None


def decode_from_agent(message: bytes) -> FromAgent:
    """A frame an agent sent; it may never open a stream. Raises BadFrame."""
    try:
        return _from_agent.decode(message)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadFrame(f"bad frame: {exc}") from None


def short(error: str) -> str:
    """An error as a Close frame may carry it: one line, bounded."""
    line = " ".join(error.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


class SendCredit:
    """How much Data this side may still send on one stream. Not thread-safe: one event loop."""

    def __init__(self, window: int = WINDOW_BYTES) -> None:
        self.window = self.left = window
        self._more = asyncio.Event()

    def grant(self, credit: int) -> None:
        """The peer's Window. Raises BadFrame when it grants past a window (it never received that much)."""
        if self.left + credit > self.window:
            raise BadFrame(f"window: a grant of {credit} bytes puts the credit past {self.window}")
        self.left += credit
        self._more.set()

    async def take(self, wanted: int) -> int:
        """Wait for some credit, then take up to `wanted` bytes of it; answers how many."""
        while self.left <= 0:
            self._more.clear()
            await self._more.wait()
        taken = min(wanted, self.left)
        self.left -= taken
        return taken

    async def pieces(self, data: bytes) -> AsyncIterator[bytes]:
        """`data` in pieces for Data frames, each taken from the credit as it allows."""
        view = memoryview(data)
        while view:
            taken = await self.take(min(len(view), MAX_DATA_BYTES))
            yield bytes(view[:taken])
            view = view[taken:]

    def give_back(self, unused: int) -> None:
        """Credit taken and not used (a read that brought fewer bytes)."""
        self.left += unused
        self._more.set()


class RecvWindow:
    """Data received on one stream and not yet passed on: never more than a window."""

    def __init__(self, window: int = WINDOW_BYTES) -> None:
        self.window, self.held = window, 0

    def received(self, size: int) -> None:
        """Raises BadFrame when the peer sent past its credit."""
        self.held += size
        if self.held > self.window:
            raise BadFrame(f"data: {self.held} bytes held on a stream, past its window of {self.window}")

    def passed_on(self, size: int) -> None:
        self.held -= size
