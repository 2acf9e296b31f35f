"""TLS on the coordinator's port: asyncio's own TLS protocol, with what a fleet of ten thousand agents needs,
and a bound per address so that no one client can stall the others' handshakes.

- A bound on handshakes worked on at once. A server handshake costs about 2 ms of CPU here; when a whole
  fleet reconnects (a coordinator restart), asyncio works on every handshake at once, in turns, so each one
  takes (fleet x 2 ms): past the handshake deadline for all of them, and the fleet never comes up (measured:
  647 of 5,000 agents up after 140 s, the coordinator at 100% CPU, 61% of it in `do_handshake`). Here a
  connection whose ClientHello has arrived waits, unread, until one of `limit` slots is free, and its
  handshake deadline runs from then: waiting its turn is not being slow, and a connection dropped from the
  queue would only come back as one more handshake. One that sends nothing takes no slot and meets the
  deadline as before, so silent clients cannot hold the gate; one that stalls half way holds its slot until
  its deadline.
- A bound per address: at most `per_address` connections from one address before the end of their
  handshake (silent, waiting or in one); a connection past it is closed at once. Without it one client
  could send a byte on each of `limit` connections and stall: every slot held for a deadline, every other
  client's handshake (agents reconnecting, every `gpuctl` call) queued behind, again and again. An honest
  client never has that many handshakes under way (agents behind one login node share its address; they
  retry with back-off and jitter).
- One read buffer for all connections instead of one each. asyncio gives each connection its own 256 KiB
  buffer, allocated and zeroed when it opens, so ten thousand idle agent connections held 2.5 GiB of
  buffers (measured: 418 MiB peak RSS for 1,000 agents); 16 KiB each still made 160 MiB of the 914 MiB
  peak under 10,000 agents. Bytes read go straight into the connection's own TLS buffer (its MemoryBIO),
  before the loop reads any other socket, so a buffer shared on the event loop's thread is never read by
  two connections at once.
"""

from __future__ import annotations

import socket
import ssl
from asyncio import sslproto
from collections import deque
from typing import Any

TLS_READ_BUFFER_BYTES = 16 * 1024  # one TLS record: a read hands the socket this much at most
_bytes = bytearray(TLS_READ_BUFFER_BYTES)
_read_buffer = (_bytes, memoryview(_bytes))  # every connection's (the event loop's thread only)


class HandshakeGate:
    """Slots for handshakes in progress, and the connections waiting for one (first come, first served).
    Not thread-safe: the event loop's thread only."""

    def __init__(self, limit: int, per_address: int) -> None:
        self.limit = limit
        self.per_address = per_address
        self.busy = 0
        self.waiting: deque[LeanTLS] = deque()
        self.arrived: dict[str, int] = {}  # by address: connections before their handshake's end

    def arrive(self, address: str) -> bool:
        """A connection from `address` opened; False when that address has its share already."""
        if self.arrived.get(address, 0) >= self.per_address:
            return False
        self.arrived[address] = self.arrived.get(address, 0) + 1
        return True

    def depart(self, address: str) -> None:
        """A connection counted by `arrive` ended its handshake, or closed."""
        left = self.arrived[address] - 1
        if left:
            self.arrived[address] = left
        else:
            del self.arrived[address]

    def enter(self, tls: LeanTLS) -> bool:
        """Take a slot, or queue `tls` for the next free one (then False)."""
        if self.busy < self.limit:
            self.busy += 1
            return True
        self.waiting.append(tls)
        return False

    def leave(self) -> None:
        """Give a slot back; the longest waiting connection still open gets it."""
        self.busy -= 1
        while self.waiting and self.busy < self.limit:
            tls = self.waiting.popleft()
            if tls.is_open():
                self.busy += 1
                tls.admit()


class LeanTLS(sslproto.SSLProtocol):
    """asyncio's server-side TLS protocol behind a `HandshakeGate`, with a small read buffer."""

    max_size = TLS_READ_BUFFER_BYTES
    # asyncio's own attributes, which typeshed does not declare
    _incoming: ssl.MemoryBIO
    _transport: Any
    _state: sslproto.SSLProtocolState
    _loop: Any
    _handshake_timeout_handle: Any
    _ssl_buffer: bytearray
    _ssl_buffer_view: memoryview

    def __init__(self, gate: HandshakeGate, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssl_buffer, self._ssl_buffer_view = _read_buffer  # its own goes at once
        self.gate = gate
        self.holds_slot = False
        self.address: str | None = None  # while counted by the gate's `arrive`

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if self.gate.arrive(address):
            self.address = address
        else:
            transport.abort()  # its share is taken: connection_lost follows

    def is_open(self) -> bool:
        """Still waiting for its handshake, its client still there. A client that gave up while waiting
        for its turn has closed its end, unseen here as its reading is paused: it is closed now rather
        than worked on (measured: with 10,000 agents starting under load, past their 38 s deadline in
        the queue, the gate spent its slots on clients gone, and only 7,009 came up in 90 s)."""
        if self._transport is None or self._state != sslproto.SSLProtocolState.DO_HANDSHAKE:
            return False
        if _hung_up(self._transport.get_extra_info("socket")):
            self._transport.abort()
            return False
        return True

    def admit(self) -> None:
        """Our turn: the deadline starts, reading goes on, and so does the handshake with the ClientHello
        kept meanwhile (soon, not inside the caller)."""
        self.holds_slot = True
        self._handshake_timeout_handle = self._loop.call_later(
            self._ssl_handshake_timeout, self._check_handshake_timeout
        )
        self._transport.resume_reading()
        self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self.is_open():
            super()._do_handshake()  # type: ignore[misc]
        else:
            self._release()

    def _do_handshake(self) -> None:
        # Called at connection time with nothing to read (cheap: it only asks for more), then whenever bytes
        # arrive: those are the work, so they wait for a slot.
        if not self.holds_slot and self._incoming.pending:
            if not self.gate.enter(self):
                self._transport.pause_reading()  # its bytes wait in the kernel, not in our memory
                self._handshake_timeout_handle.cancel()  # until its turn
                return
            self.holds_slot = True
        super()._do_handshake()  # type: ignore[misc]

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        self._release()
        self._depart()
        super()._on_handshake_complete(handshake_exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()
        self._depart()
        super().connection_lost(exc)

    def _release(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.gate.leave()

    def _depart(self) -> None:
        if self.address is not None:
            self.gate.depart(self.address)
            self.address = None


def _hung_up(sock: Any) -> bool:
    """Whether the peer closed its end (or reset): a peek at the socket, which reads nothing."""
    if sock is None:
        return True
    with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:  # asyncio's own wrapper cannot peek
        try:
            return dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
