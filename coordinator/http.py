"""Shared pieces of the HTTP surface: app keys, JSON answers, and reading bodies and queries safely."""

from __future__ import annotations

import msgspec
from aiohttp import web

from coordinator.accounts import Principal
from coordinator.service import Coordinator
from shared.wire import ErrorBody

COORDINATOR: web.AppKey[Coordinator] = web.AppKey("coordinator", Coordinator)
HOST_ID: web.RequestKey[str] = web.RequestKey("host_id", str)  # the agent's certificate common name
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


def error(status: int, message: str, field: str = "") -> web.Response:
    return json_response(ErrorBody(error=message, field=field), status)


class HTTPError(Exception):
    """Raised by handlers; the error middleware answers it as JSON."""

    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


async def body(request: web.Request, type_: type) -> object:
    return msgspec.json.decode(await request.read(), type=type_)


def int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit() is true, int() refuses it
        raise HTTPError(400, f"{name}: expected a non-negative integer", name)
    return int(raw)


def project_scope(request: web.Request) -> str | None:
    """The project a caller may see: None for an admin (every project)."""
    principal = request[PRINCIPAL]
    return None if principal.admin else principal.project


def require_admin(request: web.Request) -> None:
    if not request[PRINCIPAL].admin:
        raise HTTPError(403, "this needs an admin token")
