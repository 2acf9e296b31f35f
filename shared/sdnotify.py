"""systemd's readiness protocol (sd_notify): one datagram to the socket named by $NOTIFY_SOCKET.

`Type=notify` units (systemd/*.service) count as started only once the daemon says READY=1: the coordinator
when it listens, the agent after its first sync. Without $NOTIFY_SOCKET (not under systemd) it does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("gpuctl.sdnotify")


def notify(state: str = "READY=1") -> bool:
    """Send `state` to systemd; True if it was sent. Never raises: a daemon must not die of it. Safe to repeat."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot tell systemd %s: %s", state, exc)
        return False
    return True
