"""Shared pieces of the HTTP surface: app keys, JSON answers, and reading bodies and queries safely."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from coordinator.accounts import Principal
from coordinator.limits import ConnectionLimits
from coordinator.service import Coordinator
from shared.wire import ErrorBody

COORDINATOR: web.AppKey[Coordinator] = web.AppKey("coordinator", Coordinator)
HOST_ID: web.RequestKey[str] = web.RequestKey("host_id", str)  # the agent's certificate common name
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
LIMITS: web.AppKey[ConnectionLimits] = web.AppKey("limits", ConnectionLimits)


def body_timeout_s(request: web.Request) -> float:
    return (request.app.get(LIMITS) or ConnectionLimits()).body_timeout_s


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


def error(status: int, message: str, field: str = "") -> web.Response:
    return json_response(ErrorBody(error=message, field=field), status)


def principal_of(request: web.Request) -> Principal | None:
    """Whose API token the request carries (`Authorization: Bearer TOKEN`); None for none or an unknown one."""
    return token_holder(request, request.headers.get("Authorization", ""))


def token_holder(request: web.Request, authorization: str) -> Principal | None:
    """Whose API token an Authorization header's value (`Bearer TOKEN`) is; None for none or an unknown one."""
    token = bearer_token(authorization)
    return request.app[COORDINATOR].accounts.authenticate(token) if token else None


def bearer_token(authorization: str) -> str:
    """The token of an Authorization header's value (`Bearer TOKEN`); "" for none."""
    return authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""


class HTTPError(Exception):
    """Raised by handlers; the error middleware answers it as JSON."""

    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


async def read_body(request: web.Request) -> bytes:
    """The whole body, which must arrive within the body timeout (else 408): a client that stalls
    mid-body does not hold a handler and its memory for ever."""
    timeout_s = body_timeout_s(request)
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout_s:g} s") from None


async def timed_chunks(request: web.Request, size: int) -> AsyncIterator[bytes]:
    """The body in chunks, each of which must arrive within the body timeout (else 408): a large upload
    may take long, a stalled one may not."""
    timeout_s = body_timeout_s(request)
    chunks = request.content.iter_chunked(size).__aiter__()
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPError(408, f"the upload stalled: no bytes for {timeout_s:g} s") from None
        yield chunk


async def body(request: web.Request, type_: type) -> object:
    data = await read_body(request)
    try:
        return msgspec.json.decode(data, type=type_)
    except RecursionError:
        raise HTTPError(400, "malformed JSON: nested too deeply") from None


def int_query(request: web.Request, name: str, default: int, maximum: int = 2**62) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit() is true, int() refuses it
        raise HTTPError(400, f"{name}: expected a non-negative integer", name)
    value = int(raw)
    if value > maximum:
        raise HTTPError(400, f"{name}: {value} is over the limit of {maximum}", name)
    return value


def project_scope(request: web.Request) -> str | None:
    """The project a caller may see: None for an admin (every project)."""
    principal = request[PRINCIPAL]
    return None if principal.admin else principal.project


def require_admin(request: web.Request) -> None:
    if not request[PRINCIPAL].admin:
        raise HTTPError(403, "this needs an admin token")
