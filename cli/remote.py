"""`gpuctl exec` and `gpuctl port-forward`: streams into a running job, through the coordinator and its
channel to the job's agent (shared/channel.py has the frames). The functions here take their input and
output as arguments, so tests call them as the commands do.

The connection is read all the time, whatever the user's pace: the coordinator sends no more than the
window granted here, granted again as the bytes are written out, so a reader who pauses (`| less`) holds at
most a window here and still answers the coordinator's pings. Input goes as the coordinator's credit
allows, so it never stops reading either."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cli.api import ApiError, Unreachable, say_debug
from cli.config import CliConfig
from cli.wsclient import WebSocket, connect
from shared.channel import (
    MAX_DATA_BYTES,
    USER_WINDOW_BYTES,
    BadFrame,
    Close,
    Data,
    Eof,
    ExecOpen,
    Open,
    RecvWindow,
    Resize,
    SendCredit,
    Window,
    decode_to_agent,
    encode,
)
from shared.constants import API_PREFIX
from shared.tls_contexts import client_context

STREAM = 1  # the one stream of a client's connection (the coordinator numbers it on the channel)
LOST_EXIT_CODE = 255  # `gpuctl exec` when the stream ended without the command's exit code (ssh's choice)


@dataclass(frozen=True)
class ExecRequest:
    ref: str
    argv: tuple[str, ...]
    node: int = 0
    tty: bool = False
    rows: int = 24
    cols: int = 80


async def _open(config: CliConfig, path: str) -> WebSocket:
    """A WebSocket at the first coordinator that takes the connection (a refusal is an answer: no other
    is tried)."""
    context, failures = client_context(config.ca_file), []
    for url in config.urls:
        parsed = urllib.parse.urlsplit(url)
        host, port = parsed.hostname or "localhost", parsed.port or 443
        try:
            ws = await connect(host, port, API_PREFIX + path, config.token, context)
        except Unreachable as exc:
            failures.append(str(exc))
            say_debug(str(exc))
            continue
        say_debug(f"{url} answered {path.partition('?')[0]}")
        return ws
    raise Unreachable("; ".join(failures), sent=False)


class _Stream:
    """The one stream of a client's connection, with credit both ways."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.credit = SendCredit()  # toward the coordinator
        self.window = RecvWindow(USER_WINDOW_BYTES)  # received and not yet written out
        # the stream's frames, read and not yet handled; None: the connection ended
        self.received: asyncio.Queue[Data | Eof | Close | None] = asyncio.Queue()

    async def read(self) -> None:
        """Read the connection as frames come (pings are answered meanwhile), queueing the stream's."""
        try:
            while (message := await self.ws.receive()) is not None:
                frame = decode_to_agent(message)
                if isinstance(frame, Window):
                    self.credit.grant(frame.credit)
                elif isinstance(frame, Data | Eof | Close):
                    if isinstance(frame, Data):
                        self.window.received(len(frame.data))
                    self.received.put_nowait(frame)
        except BadFrame as exc:
            self.received.put_nowait(Close(STREAM, error=f"the coordinator sent {exc}"))
        except ApiError as exc:  # a message this client does not take
            self.received.put_nowait(Close(STREAM, error=str(exc)))
        self.received.put_nowait(None)

    async def written(self, size: int) -> None:
        """`size` bytes of the received Data were written out: the coordinator may send as many more."""
        self.window.passed_on(size)
        with contextlib.suppress(ConnectionError):
            await self.ws.send(encode(Window(STREAM, size)))

    async def send_data(self, data: bytes) -> None:
        async for piece in self.credit.pieces(data):
            await self.ws.send(encode(Data(STREAM, piece)))


async def exec_stream(
    config: CliConfig,
    request: ExecRequest,
    write: Callable[[int, bytes], Awaitable[None]],
    stdin: asyncio.Queue[bytes] | None = None,
    resizes: asyncio.Queue[tuple[int, int]] | None = None,
) -> int:
    """Run the command; `write(fd, bytes)` gets its output (fd 1 or 2), `stdin` feeds it (b"" ends it; None:
    no input at all), `resizes` carries terminal sizes. Answers the command's exit code (128+N for a signal,
    LOST_EXIT_CODE when the stream was cut, after saying why on stderr). Raises ApiError on a refusal."""
    ref = urllib.parse.quote(request.ref, safe="")
    ws = await _open(config, f"/jobs/{ref}/exec?node={request.node}")
    opening = ExecOpen("-", request.argv, request.tty, request.rows, request.cols)
    await ws.send(encode(Open(STREAM, opening)))
    stream = _Stream(ws)
    tasks = [asyncio.create_task(stream.read()), asyncio.create_task(_feed(stream, stdin))]
    if resizes is not None:
        tasks.append(asyncio.create_task(_resize(ws, resizes)))
    try:
        close = await _output(stream, write)
    finally:
        for task in tasks:
            task.cancel()
        await ws.close()
    if close.error:
        await write(2, f"gpuctl exec: {close.error}\n".encode())
    if close.exit_code is None:
        return LOST_EXIT_CODE if close.error else 0
    return 128 - close.exit_code if close.exit_code < 0 else close.exit_code


async def _feed(stream: _Stream, stdin: asyncio.Queue[bytes] | None) -> None:
    if stdin is not None:
        while data := await stdin.get():
            await stream.send_data(data)
    await stream.ws.send(encode(Eof(STREAM)))


async def _resize(ws: WebSocket, resizes: asyncio.Queue[tuple[int, int]]) -> None:
    while True:
        rows, cols = await resizes.get()
        await ws.send(encode(Resize(STREAM, rows, cols)))


async def _output(stream: _Stream, write: Callable[[int, bytes], Awaitable[None]]) -> Close:
    while (frame := await stream.received.get()) is not None:
        if isinstance(frame, Data):
            await write(frame.fd or 1, frame.data)
            await stream.written(len(frame.data))
        elif isinstance(frame, Close):
            return frame
    return Close(STREAM, error="the coordinator closed the connection")


# --- port-forward -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    local: int  # 0: any free port
    remote: int


def parse_forward(text: str) -> Forward:
    """`[LOCAL:]REMOTE`, kubectl's form. Raises ValueError with a one-line reason."""
    match = re.fullmatch(r"(?:(\d{1,5}):)?(\d{1,5})", text)
    if not match:
        raise ValueError(f"{text!r}: expected [LOCAL:]REMOTE, such as 8888 or 9000:80")
    local_text, remote_text = match.groups()
    remote = int(remote_text)
    local = remote if local_text is None else int(local_text)
    if not 1 <= remote <= 65535 or not 0 <= local <= 65535:
        raise ValueError(f"{text!r}: ports are between 1 and 65535 (LOCAL 0: any free port)")
    return Forward(local, remote)


async def listen(
    config: CliConfig,
    ref: str,
    forwards: list[Forward],
    address: str = "127.0.0.1",
    node: int = 0,
    say: Callable[[str], None] = print,
) -> list[asyncio.Server]:
    """Start one listener per forward; each connection to it becomes a stream to the job's port. The
    caller keeps the servers (and closes them). Says where each listens."""
    servers = []
    for forward in forwards:

        async def carry(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int = forward.remote
        ) -> None:
            await _carry(config, ref, port, node, reader, writer, say)

        try:
            server = await asyncio.start_server(carry, address, forward.local)
        except OSError as exc:
            raise ApiError(f"cannot listen on {address}:{forward.local}: {exc.strerror}") from None
        servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        say(f"Forwarding from {address}:{bound} -> {forward.remote}")
    return servers


async def _carry(
    config: CliConfig,
    ref: str,
    port: int,
    node: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    say: Callable[[str], None],
) -> None:
    path = f"/jobs/{urllib.parse.quote(ref, safe='')}/forward?port={port}&node={node}"
    await carry(config, path, f"port {port}", reader, writer, say)


async def carry(
    config: CliConfig,
    path: str,
    label: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    say: Callable[[str], None],
) -> bool:
    """Carry a byte stream (a local connection, `gpuctl ssh-proxy`'s stdin and stdout) over the stream that
    the WebSocket at `path` opens, until either side ends it; answers whether it ended cleanly. Says why
    it did not, after `label`."""
    try:
        ws = await _open(config, path)
    except ApiError as exc:
        say(f"{label}: {exc}")
        writer.close()
        return False
    clean, stream = False, _Stream(ws)
    tasks = [asyncio.create_task(stream.read()), asyncio.create_task(_local_to_remote(stream, reader))]
    try:
        while (frame := await stream.received.get()) is not None:
            if isinstance(frame, Data):
                writer.write(frame.data)
                await writer.drain()
                await stream.written(len(frame.data))
            elif isinstance(frame, Eof) and writer.can_write_eof():
                writer.write_eof()
            elif isinstance(frame, Close):
                if frame.error:
                    say(f"{label}: {frame.error}")
                clean = not frame.error
                break
    except ConnectionError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await ws.close()
        writer.close()
    return clean


async def _local_to_remote(stream: _Stream, reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(MAX_DATA_BYTES):
            await stream.send_data(data)
        await stream.ws.send(encode(Eof(STREAM)))


def stderr_say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
