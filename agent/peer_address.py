"""The address a host's peers in a multi-node job reach it by: agent.yaml's `internal_ip`, else the source
address of its route to the coordinator (the network the fleet shares), else its first non-loopback address,
else loopback (a coordinator and agents on one machine)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def internal_ip(configured: str | None, coordinator_url: str) -> str:
    """The host's internal IP, or "" when no route is known. Sends nothing: connecting a UDP socket
    only picks the route."""
    if configured:
        return configured
    route = _route_source(coordinator_url)
    if route and not ipaddress.ip_address(route).is_loopback:
        return route
    return _first_non_loopback() or route


def _route_source(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        return ""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            parts.hostname, parts.port or 443, type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            source = str(probe.getsockname()[0])
    except OSError:
        return ""
    return source


def _first_non_loopback() -> str:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_DGRAM)
    except OSError:
        return ""
    addresses = (str(info[4][0]) for info in infos)
    return next((a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback), "")
