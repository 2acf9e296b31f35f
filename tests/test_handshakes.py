"""The coordinator works on a bounded number of TLS handshakes at once: a connection whose ClientHello has
arrived waits for a free slot, one that has sent nothing takes none. Real coordinator, real TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from coordinator.handshakes import LeanTLS
from coordinator.limits import ConnectionLimits
from coordinator.server import RunningCoordinator, ServerConfig, start_coordinator
from shared import tls
from tests.harness import FAST, reachable_tmpdir

LIMITS = ConnectionLimits(tls_handshakes_at_once=1, tls_handshake_timeout_s=3.0)


@asynccontextmanager
async def _coordinator() -> AsyncIterator[RunningCoordinator]:
    running = await start_coordinator(
        ServerConfig(reachable_tmpdir() / "c", "127.0.0.1", 0, ("localhost",), FAST, limits=LIMITS)
    )
    try:
        yield running
    finally:
        await running.close()


class RawHandshake:
    """A client handshake driven by hand over a plain socket, so a test can stop it half way."""

    def __init__(self, running: RunningCoordinator) -> None:
        self.sock = socket.create_connection(("127.0.0.1", running.port))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = tls.client_context(running.pki.ca_cert)
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    async def hello(self) -> None:
        """Send the ClientHello and read the server's first answer: the server is working on it."""
        self._step()
        self.incoming.write(await asyncio.to_thread(self.sock.recv, 65536))

    async def finish(self) -> None:
        while not self._step():
            self.incoming.write(await asyncio.to_thread(self.sock.recv, 65536))

    def _step(self) -> bool:
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        self.sock.sendall(self.outgoing.read())
        return done


async def _healthz(running: RunningCoordinator) -> bytes:
    context = tls.client_context(running.pki.ca_cert)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=context, server_hostname="localhost"
    )
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_handshake_waits_for_the_slot_of_the_one_in_progress() -> None:
    async with _coordinator() as running:
        first = RawHandshake(running)
        await first.hello()  # holds the only slot
        second = asyncio.create_task(_healthz(running))
        await asyncio.sleep(0.5)  # ample for a handshake on loopback: it is waiting, not slow
        assert not second.done(), "a second handshake went ahead while the only slot was held"
        await first.finish()  # gives the slot back
        assert (await second).startswith(b"HTTP/1.1 200")
        first.sock.close()


async def test_a_client_that_hung_up_while_waiting_for_its_turn_costs_no_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admitted: list[LeanTLS] = []
    admit = LeanTLS.admit
    monkeypatch.setattr(LeanTLS, "admit", lambda tls: (admitted.append(tls), admit(tls)))
    async with _coordinator() as running:
        first = RawHandshake(running)
        await first.hello()  # holds the only slot
        gone = RawHandshake(running)
        gone._step()  # its ClientHello waits for the slot...
        await asyncio.sleep(0.2)
        gone.sock.close()  # ...and it gives up
        waiting = asyncio.create_task(_healthz(running))
        await asyncio.sleep(0.2)
        await first.finish()
        assert (await waiting).startswith(b"HTTP/1.1 200")
        assert len(admitted) == 1, "a handshake was worked on for a client that had hung up"
        first.sock.close()


async def test_a_silent_connection_takes_no_slot() -> None:
    async with _coordinator() as running:
        silent = socket.create_connection(("127.0.0.1", running.port))  # sends nothing at all
        assert (await _healthz(running)).startswith(b"HTTP/1.1 200")
        assert not _closed(silent), "the handshake waited until the silent connection was dropped"
        silent.close()


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def test_one_address_cannot_stall_the_handshakes_of_the_others() -> None:
    """A client that sends one byte on many connections and stalls holds its share of the handshake slots
    at most, and connections past what one address may have open are closed at once; a client from
    another address is answered meanwhile, not queued behind the stalled ones until their deadlines."""
    limits = ConnectionLimits(
        tls_handshakes_at_once=3,
        tls_handshakes_per_address=2,
        unauthenticated_per_address=4,
        tls_handshake_timeout_s=10.0,
    )
    running = await start_coordinator(
        ServerConfig(reachable_tmpdir() / "c", "127.0.0.1", 0, ("localhost",), FAST, limits=limits)
    )
    stalled = []
    try:
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", running.port))
            sock.sendall(b"\x16")  # the first byte of a handshake record, then nothing
            stalled.append(sock)
        await asyncio.sleep(0.3)

        context = tls.client_context(running.pki.ca_cert)
        reader, writer = await asyncio.wait_for(  # well inside the stalled ones' 10 s deadline
            asyncio.open_connection(
                "127.0.0.1",
                running.port,
                ssl=context,
                server_hostname="localhost",
                local_addr=("127.0.0.2", 0),
            ),
            3.0,
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 3.0)).startswith(b"HTTP/1.1 200")
        writer.close()
        closed = await asyncio.gather(*(asyncio.to_thread(_closed, sock) for sock in stalled))
        assert sum(closed) == 2, "connections past what one address may have open were not closed"
    finally:
        for sock in stalled:
            sock.close()
        await running.close()


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) this connection; waits up to a second for it."""
    sock.settimeout(1.0)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
