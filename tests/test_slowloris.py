"""Slow and numerous clients: half-sent requests are closed after the header deadline, one address holds
only so many unauthenticated connections, a stalled body gets a 408, and /healthz keeps answering."""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from coordinator.limits import ConnectionLimits
from coordinator.server import RunningCoordinator, ServerConfig, ensure_admin_token, start_coordinator
from shared import tls
from tests.agent_session import agent_session
from tests.harness import FAST, reachable_tmpdir

CAP = 8
LIMITS = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=1.0, unauthenticated_per_address=CAP)
HALF = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "  # headers never finish


@asynccontextmanager
async def _coordinator() -> AsyncIterator[RunningCoordinator]:
    root = reachable_tmpdir()
    running = await start_coordinator(
        ServerConfig(root / "c", "127.0.0.1", 0, ("localhost",), FAST, limits=LIMITS)
    )
    try:
        yield running
    finally:
        await running.close()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _half_sent(running: RunningCoordinator, context: ssl.SSLContext) -> Connection:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=context, server_hostname="localhost"
    )
    writer.write(HALF)
    await writer.drain()
    return reader, writer


async def _closed_after_s(connection: Connection, started: float) -> float:
    """Seconds from `started` until the server closed the connection."""
    reader, writer = connection
    try:
        while await reader.read(1024):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    took = time.monotonic() - started
    writer.close()
    return took


async def _healthz_from(running: RunningCoordinator, context: ssl.SSLContext, source: str) -> int:
    connector = aiohttp.TCPConnector(ssl=context, local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://localhost:{running.port}/healthz") as resp,
    ):
        return resp.status


async def test_half_sent_requests_are_closed_and_healthz_answers_past_the_cap() -> None:
    async with _coordinator() as running:
        context = tls.client_context(running.pki.ca_cert)
        started = time.monotonic()
        connections = [await _half_sent(running, context) for _ in range(CAP + 6)]
        # past the cap from 127.0.0.1: another address, and an agent with its certificate, still get in
        assert await _healthz_from(running, context, "127.0.0.2") == 200
        folder = running.coordinator.logs.root.parent
        async with agent_session(running, "h1", folder) as agent, agent.get("/agent/v1/ca") as resp:
            assert resp.status == 200
        closed = sorted(await asyncio.gather(*(_closed_after_s(c, started) for c in connections)))
        assert all(s < 0.9 for s in closed[:6]), closed  # over the cap: closed at once
        assert all(0.9 <= s < 5.0 for s in closed[6:]), closed  # the rest: after the header deadline
        assert await _healthz_from(running, context, "127.0.0.1") == 200  # the address may come back


async def test_a_stalled_body_gets_a_408_in_json() -> None:
    async with _coordinator() as running:
        token = ensure_admin_token(running.coordinator.store, running.coordinator.logs.root.parent / "t")
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            running.port,
            ssl=tls.client_context(running.pki.ca_cert),
            server_hostname="localhost",
        )
        head = f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
        writer.write(head.encode() + b'{"spec":')
        answer = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), answer
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"].startswith(
            "the request body did not arrive"
        )


async def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        async with _coordinator():
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(hard, 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
