"""How the agent reaches the coordinator: directly, through an HTTP CONNECT proxy, or through an SSH tunnel.

Every HTTPS session the agent opens (enrollment, sync, renewal, logs, file fetches) comes from
`Transport.session`, so all of them travel the same way. TLS is always end to end: through a proxy, aiohttp sends
CONNECT and then does TLS inside; through a tunnel, TLS runs over the tunnel's unix socket and still checks the
coordinator's certificate against the host of the `coordinator:` URL (not the socket, not localhost). With
several coordinators, the one session reaches each of them the same way (a tunnel forwards one socket each).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.helpers import ceil_timeout

from agent.keepalive import keepalive_socket
from agent.mirror_link import MirrorLink, MirrorRelay
from agent.tunnel import Hop, TcpForward, Tunnel
from shared.wire import MAX_LINK_ERROR_CHARS, MAX_TRANSPORT_CHARS

LINK_ERROR_REPORT_S = 600.0  # a link failure is reported in syncs for this long after it happened
PROXY_ERRORS = (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)
MIRROR_ROUTE = "; image mirror through the same route"


class UnixSocketTLSConnector(aiohttp.TCPConnector):
    """TCPConnector that dials a unix socket (`path_for(host, port)` of the URL) instead of resolving and
    connecting to the URL's host; TLS (the certificate chain and the URL host's name) is checked exactly as
    for a direct connection."""

    def __init__(self, path_for: Callable[[str, int], Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._path_for = path_for

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[ResolveResult]:
        # No DNS: the far end of the tunnel resolves the coordinator's name.
        placeholder: ResolveResult = {
            "hostname": host, "host": "127.0.0.1", "port": port,
            "family": socket.AF_INET, "proto": 0, "flags": 0,
        }  # fmt: skip
        return [placeholder]

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: Any,
        req: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, Any]:
        try:
            async with ceil_timeout(timeout.sock_connect, ceil_threshold=timeout.ceil_threshold):
                factory = args[0]  # aiohttp's protocol factory; TLS settings come in kwargs
                path = str(self._path_for(req.url.host or "", req.url.port or 443))
                return await asyncio.get_running_loop().create_unix_connection(factory, path, **kwargs)
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, asyncio.TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc


class Transport:
    """One way to the coordinator. `description` says which (for `gpuctl hosts -v`); `link_error()` is the
    last failure of the proxy or tunnel, reported in syncs for a while after it heals."""

    def __init__(
        self, proxy: str | None = None, tunnel: Tunnel | None = None, mirror: MirrorLink | None = None
    ) -> None:
        self.proxy = proxy
        self.tunnel = tunnel
        # Through a proxy the agent relays the engine's pulls itself; a tunnel carries them as a forward.
        self.relay = MirrorRelay(mirror, proxy) if mirror is not None and proxy and tunnel is None else None
        self._proxy_error, self._proxy_error_at = "", 0.0
        if tunnel is not None:
            self.description = tunnel.describe()
        elif proxy:
            self.description = f"proxy {urlsplit(proxy).netloc.rpartition('@')[2]}"
        else:
            self.description = "direct"
        self.description = self.description[:MAX_TRANSPORT_CHARS]
        carried = mirror is not None and (tunnel is not None or self.relay is not None)
        # what the coordinator shows as this host's route (`gpuctl hosts -v`)
        self.route = (self.description + (MIRROR_ROUTE if carried else ""))[:MAX_TRANSPORT_CHARS]

    def session(self, ssl_context: ssl.SSLContext, limit: int = 100) -> aiohttp.ClientSession:
        """A new session that reaches the coordinator this way. The caller closes it."""
        trace = aiohttp.TraceConfig()
        trace.on_request_exception.append(self._on_exception)
        if self.tunnel is not None:
            connector: aiohttp.BaseConnector = UnixSocketTLSConnector(
                self.tunnel.socket_for, ssl=ssl_context, limit=limit
            )
            return aiohttp.ClientSession(connector=connector, trace_configs=[trace])
        connector = aiohttp.TCPConnector(ssl=ssl_context, limit=limit, socket_factory=keepalive_socket)
        return aiohttp.ClientSession(connector=connector, proxy=self.proxy, trace_configs=[trace])

    async def _on_exception(self, _session: Any, _ctx: Any, params: Any) -> None:
        if isinstance(params.exception, PROXY_ERRORS):
            self._proxy_error = f"{self.description}: {params.exception}"
            self._proxy_error_at = time.time()

    async def run(self) -> None:
        """Keep the tunnel (or the mirror's relay) up until cancelled; nothing to do for a plain proxy or a
        direct connection."""
        if self.tunnel is not None:
            await self.tunnel.run()
        elif self.relay is not None:
            await self.relay.run()
        else:
            await asyncio.Event().wait()

    def problem(self) -> str:
        """Why the coordinator cannot be reached this way right now, if the tunnel knows; else ""."""
        return self.tunnel.error if self.tunnel is not None else ""

    def link_error(self, now: float | None = None) -> tuple[str, float]:
        """The last proxy or tunnel failure and its age in seconds, if recent; ("", 0) otherwise."""
        if self.tunnel is not None:
            text, at = self.tunnel.last_error, self.tunnel.last_error_at
        else:
            text, at = self._proxy_error, self._proxy_error_at
        age_s = (now or time.time()) - at
        if not text or age_s > LINK_ERROR_REPORT_S:
            return "", 0.0
        return text[:MAX_LINK_ERROR_CHARS], max(0.0, age_s)

    async def ready(self, timeout_s: float) -> None:
        """Wait until the tunnel is up (at once without one). Raises LinkDown with the tunnel's error when it
        failed for a reason that waiting will not fix, or when `timeout_s` passed."""
        if self.tunnel is None:
            return
        deadline = time.monotonic() + timeout_s
        while not self.tunnel.up.is_set():
            self.tunnel.tried.clear()
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise LinkDown(self.tunnel.error or f"ssh tunnel not up after {timeout_s:.0f} s")
            try:
                async with asyncio.timeout(left_s):
                    await self.tunnel.tried.wait()
            except TimeoutError:
                continue
            if self.tunnel.error and _hopeless(self.tunnel.error):
                raise LinkDown(self.tunnel.error)


class LinkDown(Exception):
    """The coordinator cannot be reached through the configured proxy or bastion; one line says why."""


def _hopeless(error: str) -> bool:
    """Failures that another try will not fix without an operator: host keys, refused keys, names."""
    return any(w in error for w in ("host key", "refused the key", "cannot resolve", "could not be verified"))


def env_proxy(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy for `url` from HTTPS_PROXY / https_proxy, unless NO_PROXY / no_proxy names its host."""
    lower = {k.lower(): v for k, v in environ.items() if k.lower() in ("https_proxy", "no_proxy")}
    proxy = lower.get("https_proxy")
    if not proxy:
        return None
    host = urlsplit(url).hostname or ""
    no_proxy = lower.get("no_proxy", "")
    if no_proxy and _bypassed(host, no_proxy):
        return None
    return proxy


def _bypassed(host: str, no_proxy: str) -> bool:
    """NO_PROXY's rules as curl and Python read them: suffixes, `*`, host:port."""
    return bool(urllib.request.proxy_bypass_environment(host, {"no": no_proxy}))  # type: ignore[attr-defined]


def make_transport(
    coordinators: Sequence[str],
    hops: tuple[Hop, ...],
    proxy: str | None,
    runtime_dir: Any,
    mirror: MirrorLink | None = None,
) -> Transport:
    """The transport the config asks for: a tunnel to every coordinator when it names bastions, else the
    proxy (if any); either also carries the registry mirror when `mirror` is given."""
    if hops:
        targets = tuple((p.hostname or "", p.port or 443) for p in map(urlsplit, coordinators))
        forwards = (TcpForward(mirror.local_port, mirror.host, mirror.port),) if mirror else ()
        tunnel = Tunnel(hops, runtime_dir, targets, forwards)
        return Transport(tunnel=tunnel, mirror=mirror)
    return Transport(proxy=proxy, mirror=mirror)
