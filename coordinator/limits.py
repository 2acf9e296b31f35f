"""How long and how many: the coordinator's limits on slow or numerous clients, in one place."""

from __future__ import annotations

from dataclasses import dataclass

HEADER_TIMEOUT_S = 15.0  # a request's line and headers must arrive within this of its first byte
BODY_TIMEOUT_S = 60.0  # a body (or, for a files upload, each chunk of it) must arrive within this
TLS_HANDSHAKE_TIMEOUT_S = 10.0
TLS_HANDSHAKES_AT_ONCE = 64  # worked on at once; more wait their turn (coordinator/handshakes.py)
# Of those, at most this many for one address at once (its others wait for one of its own): one address
# cannot hold the slots of all the others.
TLS_HANDSHAKES_PER_ADDRESS = 8
KEEPALIVE_TIMEOUT_S = 75.0  # an idle keep-alive connection closes after this (as nginx's default)
# Connections the kernel queues before the coordinator accepts them (capped by net.core.somaxconn): a fleet
# that reconnects at once (a coordinator restart) must not overflow it, or each lost SYN costs 1, 3, 7 s.
LISTEN_BACKLOG = 4096
UNAUTHENTICATED_CONNECTIONS_PER_ADDRESS = 64  # open connections from one address without a cert or token


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S
    tls_handshakes_at_once: int = TLS_HANDSHAKES_AT_ONCE
    tls_handshakes_per_address: int = TLS_HANDSHAKES_PER_ADDRESS
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    unauthenticated_per_address: int = UNAUTHENTICATED_CONNECTIONS_PER_ADDRESS
    listen_backlog: int = LISTEN_BACKLOG


@dataclass(frozen=True)
class BusyLimits:
    """Requests of each class being read or worked on at once; one over is answered 429 with Retry-After.
    A long poll that is waiting for news (a sync, `logs -f`) holds no slot: only work counts."""

    agent: int = 256  # syncs, renewals, enrollments
    logs: int = 64  # agent log chunks (each up to 256 KiB of body)
    user: int = 128  # the user API
    retry_after_s: int = 2  # agents add jitter on top, so a refused fleet comes back spread out
