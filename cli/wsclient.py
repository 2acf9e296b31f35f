"""A small WebSocket client (RFC 6455) on asyncio's TLS streams, for the CLI's streams into jobs (`exec`,
`port-forward`): binary messages only, no extensions. Small so that the CLI loads no HTTP library for it; a
refusal before the upgrade keeps the coordinator's one-line JSON error, which a general client drops."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import struct

from cli.api import CONNECT_TIMEOUT_S, ApiError, Unreachable
from shared.errors import reason_of

MAX_MESSAGE_BYTES = 1 << 20
OP_CONTINUATION, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x2, 0x8, 0x9, 0xA


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()

    async def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        """One masked frame (clients must mask)."""
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        mask = os.urandom(4)
        async with self._lock:
            self.writer.write(head + mask + _masked(payload, mask))
            await self.writer.drain()

    async def receive(self) -> bytes | None:
        """The next binary message; None once the server closed the connection. Pings are answered."""
        while True:
            try:
                first, second = await self.reader.readexactly(2)
                size = second & 0x7F
                if size == 126:
                    size = struct.unpack("!H", await self.reader.readexactly(2))[0]
                elif size == 127:
                    size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
                if size > MAX_MESSAGE_BYTES:
                    raise ApiError(f"the coordinator sent a message of {size} bytes")
                payload = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            opcode = first & 0x0F
            if opcode == OP_CONTINUATION or not first & 0x80:
                raise ApiError("the coordinator sent a fragmented message; it sends whole frames")
            if opcode == OP_PING:
                await self.send(payload, OP_PONG)
            elif opcode == OP_CLOSE:
                return None
            elif opcode == OP_BINARY:
                return payload

    async def close(self) -> None:
        try:
            await self.send(struct.pack("!H", 1000), OP_CLOSE)
        except (ConnectionError, RuntimeError):
            pass
        self.writer.close()


def _masked(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


async def connect(host: str, port: int, path: str, token: str, context: ssl.SSLContext) -> WebSocket:
    """Open a WebSocket at `path`. Raises ApiError with the coordinator's message when it refuses."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=MAX_MESSAGE_BYTES)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise Unreachable(
            f"cannot reach the coordinator at https://{host}:{port}: {reason_of(exc)}", sent=False
        ) from None
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        if status != 101:
            length = next(
                (
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                ),
                0,
            )
            body = await reader.readexactly(min(length, 65536))
            writer.close()
            raise ApiError(_message(body) or f"the coordinator answered {status}")
    except (
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ConnectionError,
        ValueError,
        IndexError,
    ) as exc:
        writer.close()
        raise ApiError(f"the coordinator's answer to {path} is not a WebSocket: {exc}") from None
    return WebSocket(reader, writer)


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
