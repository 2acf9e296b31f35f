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
- A bound per address: at most `per_address` of the slots go to one address, its other connections wait
  for one of its own; and at most `open_per_address` connections of one address may be before their
  handshake's end (silent, waiting or in one), a connection past that is closed at once. Without it one
  client could send a byte on each of `limit` connections and stall: every slot held for a deadline, every
  other client's handshake (agents reconnecting, every `gpuctl` call) queued behind, again and again.
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
    """Slots for handshakes in progress, at most `per_address` of them for one address, and the connections
    waiting for one (by address, first come, first served). At most `open_per_address` connections of one
    address may be before their handshake's end. Not thread-safe: the event loop's thread only."""

    def __init__(self, limit: int, per_address: int, open_per_address: int) -> None:
        self.limit = limit
        self.per_address = per_address
        self.open_per_address = open_per_address
        self.busy = 0
        self.held: dict[str, int] = {}  # by address: slots
        self.waiting: dict[str, deque[LeanTLS]] = {}  # by address, the longest waiting address first
        self.arrived: dict[str, int] = {}  # by address: connections before their handshake's end

    def arrive(self, address: str) -> bool:
        """A connection from `address` opened; False when that address has as many as it may already."""
        if self.arrived.get(address, 0) >= self.open_per_address:
            return False
        _bump(self.arrived, address, 1)
        return True

    def depart(self, address: str) -> None:
        """A connection counted by `arrive` ended its handshake, or closed."""
        _bump(self.arrived, address, -1)

    def enter(self, tls: LeanTLS, address: str) -> bool:
        """Take a slot, or queue `tls` for the next free one its address may have (then False)."""
        if self.busy < self.limit and self.held.get(address, 0) < self.per_address:
            self.busy += 1
            _bump(self.held, address, 1)
            return True
        self.waiting.setdefault(address, deque()).append(tls)
        return False

    def leave(self, address: str) -> None:
        """Give a slot back; it goes to the longest waiting connection still open whose address has room."""
        self.busy -= 1
        _bump(self.held, address, -1)
        for waiting_address in list(self.waiting):
            queue = self.waiting[waiting_address]
            while queue and self.busy < self.limit and self.held.get(waiting_address, 0) < self.per_address:
                tls = queue.popleft()
                if tls.is_open():
                    self.busy += 1
                    _bump(self.held, waiting_address, 1)
                    tls.admit()
            if not queue:
                del self.waiting[waiting_address]
            if self.busy >= self.limit:
                return


def _bump(counts: dict[str, int], key: str, by: int) -> None:
    left = counts.get(key, 0) + by
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)


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
        self.address = ""
        self.counted = False  # by the gate's `arrive`, until its handshake's end

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.counted = self.gate.arrive(self.address)
        if not self.counted:
            transport.abort()  # its address has too many connections under way: connection_lost follows

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
            if not self.gate.enter(self, self.address):
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
            self.gate.leave(self.address)

    def _depart(self) -> None:
        if self.counted:
            self.counted = False
            self.gate.depart(self.address)


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
