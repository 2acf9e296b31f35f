"""The registry mirror reached the way the agent reaches the coordinator (`docker.mirror_via_link`).

The host's Docker engine pulls from `127.0.0.1:PORT` (plain HTTP is allowed there by default: Docker treats
127.0.0.0/8 as an insecure registry), and the agent carries those bytes to the mirror: through a bastion, as a
second local forward of the same ssh (agent/tunnel.py); through a proxy, with the relay below, which opens one
HTTP CONNECT to the mirror per connection the engine makes. The mirror's path prefix is kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

log = logging.getLogger("gpuctl.agent")

LOCAL_HOST = "127.0.0.1"
DEFAULT_LOCAL_PORT = 5099  # the registry's 5000, moved out of the way of a registry on the host itself
DEFAULT_MIRROR_PORT = 443  # a registry named without a port speaks HTTPS
CHUNK_BYTES = 64 * 1024  # each direction holds at most one chunk plus the transport's high-water mark
CONNECT_TIMEOUT_S = 15.0  # to reach the proxy and hear its answer to CONNECT
MAX_CONNECT_REPLY_BYTES = 16 * 1024


@dataclass(frozen=True)
class MirrorLink:
    """Where the mirror is (`host`, `port`, as the far end of the link resolves it) and the loopback port the
    engine pulls from."""

    host: str
    port: int
    local_port: int = DEFAULT_LOCAL_PORT


def split_mirror(mirror: str) -> tuple[str, int, str]:
    """`host[:port][/prefix]` as (host, port, "/prefix" or ""). An IPv6 address comes in brackets."""
    hostport, slash, prefix = mirror.partition("/")
    parts = urlsplit(f"//{hostport}")
    return parts.hostname or hostport, parts.port or DEFAULT_MIRROR_PORT, slash + prefix


def local_mirror(mirror: str, local_port: int) -> str:
    """The mirror as the engine names it when the link carries it: `127.0.0.1:PORT` with the mirror's prefix."""
    return f"{LOCAL_HOST}:{local_port}{split_mirror(mirror)[2]}"


class MirrorRelay:
    """Listens on 127.0.0.1:`link.local_port`; each connection becomes a CONNECT to the mirror through
    `proxy` (http://[user:pass@]host:port), then bytes both ways until either side closes. A proxy that
    refuses closes the engine's connection and is one line in the log. Not thread-safe; one per agent."""

    def __init__(self, link: MirrorLink, proxy: str) -> None:
        self.link = link
        parts = urlsplit(proxy)
        self._proxy = (parts.hostname or "", parts.port or 3128)
        self._auth = ""
        self._connections: set[asyncio.Task[None]] = set()
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._auth = "Proxy-Authorization: Basic " + base64.b64encode(token.encode()).decode() + "\r\n"

    async def run(self) -> None:
        """Serve until cancelled. A port that cannot be bound is one line in the log (the coordinator's link
        does not depend on it)."""
        try:
            server = await asyncio.start_server(self._serve, LOCAL_HOST, self.link.local_port)
        except OSError as exc:
            log.error(
                "image mirror relay: cannot listen on %s:%d (docker.mirror_local_port): %s",
                LOCAL_HOST, self.link.local_port, exc.strerror,
            )  # fmt: skip
            await asyncio.Event().wait()
            return
        log.info(
            "image mirror relay: %s:%d → %s:%d through proxy %s:%d",
            LOCAL_HOST, self.link.local_port, self.link.host, self.link.port, *self._proxy,
        )  # fmt: skip
        try:
            async with server:
                await server.serve_forever()
        finally:
            for task in list(self._connections):  # the engine's open pulls end with the agent
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(client_r, client_w)
        finally:
            self._connections.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream = await self._connect()
        except (OSError, TimeoutError, ConnectRefused) as exc:
            log.warning(
                "image mirror relay: %s:%d through the proxy: %s", self.link.host, self.link.port, exc
            )
            await _close(client_w)
            return
        mirror_r, mirror_w = upstream
        pipes = {
            asyncio.create_task(_pipe(client_r, mirror_w)),
            asyncio.create_task(_pipe(mirror_r, client_w)),
        }
        try:
            pending = pipes
            while pending:  # both directions end cleanly, or the first broken one ends both
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if not all(task.result() for task in done):
                    break
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            await _close(mirror_w)
            await _close(client_w)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the mirror through the proxy. Raises ConnectRefused with the proxy's status line."""
        target = f"[{self.link.host}]" if ":" in self.link.host else self.link.host
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(*self._proxy, limit=MAX_CONNECT_REPLY_BYTES)
            try:
                writer.write(
                    f"CONNECT {target}:{self.link.port} HTTP/1.1\r\nHost: {target}:{self.link.port}\r\n"
                    f"{self._auth}\r\n".encode()
                )
                await writer.drain()
                try:
                    reply = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    raise ConnectRefused("the proxy's answer to CONNECT is too long") from None
                except asyncio.IncompleteReadError:
                    raise ConnectRefused(
                        "the proxy closed the connection without answering CONNECT"
                    ) from None
                status = reply.split(b"\r\n", 1)[0].decode(errors="replace")
                code = status.split(" ", 2)[1] if status.count(" ") >= 1 else ""
                if not code.startswith("2"):
                    raise ConnectRefused(f"the proxy refused CONNECT: {status}")
            except BaseException:
                await _close(writer)
                raise
        return reader, writer


class ConnectRefused(Exception):
    """The proxy did not open the way to the mirror; one line says why."""


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> bool:
    """Copy until `source` ends, then pass the end on (half-close), so a request's end reaches the far side.
    False when either side broke."""
    try:
        while chunk := await source.read(CHUNK_BYTES):
            sink.write(chunk)
            await sink.drain()  # waits while the other side is slower: memory stays bounded
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        return False
    return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
