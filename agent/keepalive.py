"""TCP keepalive on the agent's connections to the coordinator, so that a connection whose peer vanished
(a partition, a coordinator host that lost power) fails within about half a minute instead of the kernel's
two hours. The long poll's read deadline (`sync.read_deadline_s`) catches the same case on a busy
connection; keepalive also catches it on an idle pooled one before it is reused."""

from __future__ import annotations

import socket

from aiohttp.connector import AddrInfoType

KEEPALIVE_IDLE_S = 15  # quiet this long, then probe
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_PROBES = 3  # unanswered probes before the connection is declared dead


def keepalive_socket(addr_info: AddrInfoType) -> socket.socket:
    """A socket factory for aiohttp's TCPConnector: a plain socket of the address's family, with keepalive."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    set_keepalive(sock)
    return sock


def set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, name):  # Linux has all three; elsewhere the system's defaults stand
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
