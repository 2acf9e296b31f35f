"""Slow and numerous clients must not starve the coordinator of file descriptors.

aiohttp times out neither a request whose headers never complete nor, before the first request, a silent
connection (only its hour-long keep-alive does). So each connection sits behind a thin protocol that:
- closes it when a request's line and headers have not arrived `header_timeout_s` after the connection
  opened or after the first byte of a later request (bodies have their own deadline: `http.read_body`);
- closes it at once when its address already holds `unauthenticated_per_address` connections that showed
  neither a client certificate of our CA nor, in an answered request, a known token.
TLS handshakes time out in the listener (`tls_handshake_timeout_s`) and are worked on a bounded number
at a time (`handshakes.py`); `raise_fd_limit` lifts the soft limit on open files to the hard one at start.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from coordinator.handshakes import HandshakeGate, LeanTLS
from coordinator.http import HOST_ID, PRINCIPAL
from coordinator.limits import ConnectionLimits

log = logging.getLogger("gpuctl.coordinator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FD_LIMIT_CEILING = 1 << 20


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one; answers the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, wanted, exc)
    return soft


class ConnectionGuard:
    """The connections of one listener, by transport. Not thread-safe: the event loop's thread only."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.unauthenticated: dict[str, int] = {}  # by client address
        self._by_transport: dict[asyncio.BaseTransport, _GuardedProtocol] = {}

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _GuardedProtocol(self, inner)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy while a request runs (its headers are in: no header deadline), and
        authenticated once a request on it passed the token or certificate check."""
        guarded = self._by_transport.get(request.transport) if request.transport else None
        if guarded is None:
            return await handler(request)
        guarded.request_started()
        try:
            return await handler(request)
        finally:
            if request.get(PRINCIPAL) is not None or request.get(HOST_ID) is not None:
                guarded.authenticate()
            guarded.busy = False

    def admit(self, guarded: _GuardedProtocol, address: str, has_cert: bool) -> bool:
        self._by_transport[guarded.transport] = guarded
        if has_cert:
            return True
        held = self.unauthenticated.get(address, 0)
        if held >= self.limits.unauthenticated_per_address:
            log.warning("refused a connection from %s: %d unauthenticated ones are open", address, held)
            return False
        self.unauthenticated[address] = held + 1
        guarded.counted = True
        return True

    def release(self, guarded: _GuardedProtocol) -> None:
        self._by_transport.pop(guarded.transport, None)
        guarded.authenticate()

    def uncount(self, address: str) -> None:
        left = self.unauthenticated.get(address, 0) - 1
        if left > 0:
            self.unauthenticated[address] = left
        else:
            self.unauthenticated.pop(address, None)


class _GuardedProtocol(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; adds the header deadline and the per-address count."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.transport = asyncio.Transport()  # until connection_made
        self.address = ""
        self.counted = self.busy = self.refused = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        ssl_object = transport.get_extra_info("ssl_object")
        has_cert = ssl_object is not None and ssl_object.getpeercert(binary_form=True) is not None
        if not self.guard.admit(self, self.address, has_cert):
            self.refused = True
            self.transport.abort()
            return
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._deadline is None:
            self._arm()  # the first byte of a later request: its headers are due
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.release(self)
        if not self.refused:
            self.inner.connection_lost(exc)

    def request_started(self) -> None:
        self.busy = True
        self._disarm()

    def authenticate(self) -> None:
        if self.counted:
            self.counted = False
            self.guard.uncount(self.address)

    def _arm(self) -> None:
        timeout_s = self.guard.limits.header_timeout_s
        self._deadline = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.busy:
            log.info("closed a connection from %s: no complete request headers in time", self.address)
            self.transport.abort()


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site, with every connection behind the guard and a TLS handshake deadline."""

    __slots__ = ("_host", "_port", "_guard")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, ssl_context: Any, guard: ConnectionGuard
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=guard.limits.listen_backlog)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        context, guard = self._ssl_context, self._guard
        limits = guard.limits
        gate = HandshakeGate(
            limits.tls_handshakes_at_once,
            limits.tls_handshakes_per_address,
            limits.unauthenticated_per_address,
        )

        def accept() -> asyncio.BaseProtocol:
            """TLS around the guard around aiohttp, as `create_server(ssl=...)` wraps them (no waiter: a
            failed handshake closes its connection itself), behind the handshake gate."""
            timeout_s = guard.limits.tls_handshake_timeout_s
            inner = guard.protocol(server())
            return LeanTLS(
                gate, loop, inner, context, None, server_side=True, ssl_handshake_timeout=timeout_s
            )

        self._server = await loop.create_server(
            accept, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
