"""Refuse agents whose protocol version this coordinator does not serve, and say so where people look.

Every agent request carries `Gpuctl-Protocol: MAJOR.MINOR` (none means 1.0). One outside the served range
(`shared/protocol.py`) is answered 426 with one JSON line naming both versions; the refusal is kept on the
host (by its certificate's host id) and shown in `gpuctl hosts`, and such a host takes no new work until a
request in a version served here clears it. The CA download stays open to every version: joining needs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from coordinator.host_problems import PROTOCOL
from coordinator.http import COORDINATOR, HOST_ID, error
from shared import constants as C
from shared.protocol import refusal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNVERSIONED = "1.0"  # what an agent that sends no header speaks: the protocol before the header existed


@web.middleware
async def protocol_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(C.AGENT_PREFIX + "/") or request.path == f"{C.AGENT_PREFIX}/ca":
        return await handler(request)
    coord = request.app[COORDINATOR]
    ours = coord.settings.protocol_version
    agent = request.headers.get(C.PROTOCOL_HEADER, UNVERSIONED)
    reason = refusal(ours, agent)
    host_id = request.get(HOST_ID)
    if reason is None:
        if host_id is not None and coord.problems.has(host_id, PROTOCOL):
            coord.problems.clear(host_id, PROTOCOL)
            coord.kick(hosts=(host_id,))  # it takes work again
        return await handler(request)
    if host_id is not None:
        if coord.store.get_host(host_id) is None:  # never synced: list it, so `hosts` can say why
            coord.store.ensure_host(host_id, host_id)
        refused_before = coord.problems.has(host_id, PROTOCOL)
        coord.problems.set(host_id, PROTOCOL, f"refused: {reason}")
        if not refused_before:
            coord.kick(hosts=(host_id,))  # no new work there
    answer = error(426, reason, C.PROTOCOL_HEADER)
    answer.headers[C.PROTOCOL_HEADER] = ours
    return answer
