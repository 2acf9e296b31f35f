"""The coordinator's HTTP app: one TLS port for the user API (bearer tokens) and the agent API (client
certificates). Errors answer JSON `{"error": ..., "field": ...}` with a 4xx status, never a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from coordinator import (
    api_admin,
    api_agent,
    api_channel,
    api_metrics,
    api_readings,
    api_secrets,
    api_service,
    api_usage,
    api_user,
    console,
)
from coordinator.accounts import Invalid, Refused
from coordinator.busy import BusyGate
from coordinator.console_sessions import console_reader
from coordinator.http import COORDINATOR, HOST_ID, PRINCIPAL, HTTPError, error, principal_of
from coordinator.protocol_check import protocol_middleware
from coordinator.service import Ambiguous, Busy, Coordinator, NotFound
from shared import constants as C
from shared.spec import SpecError
from shared.states import HostState
from shared.tls import BadCsr, peer_identity

log = logging.getLogger("gpuctl.coordinator")

BUSY: web.AppKey[BusyGate] = web.AppKey("busy", BusyGate)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_exception(exc)
    except HTTPError as exc:
        return error(exc.status, exc.message, exc.field)
    except msgspec.ValidationError as exc:
        return error(400, f"invalid request: {exc}", _field_of(str(exc)))
    except msgspec.DecodeError as exc:
        return error(400, f"malformed JSON: {exc}")
    except (SpecError, Invalid) as exc:
        return error(400, str(exc), exc.field)
    except BadCsr as exc:
        return error(400, str(exc), "csr")
    except Refused as exc:
        return error(403, str(exc))
    except NotFound as exc:
        return error(404, str(exc))
    except (Ambiguous, Busy) as exc:
        return error(409, str(exc))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error(500, "internal error; the coordinator's log has the details")


def _http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (a body over the limit, no such route, a wrong method) in our JSON shape."""
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    answer = error(exc.status, message.strip() or exc.reason)
    if "Allow" in exc.headers:
        answer.headers["Allow"] = exc.headers["Allow"]
    return answer


def _field_of(message: str) -> str:
    # msgspec says "... - at `$.spec.resources.gpu`"
    return message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else ""


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith(C.AGENT_PREFIX + "/"):
        if path not in api_agent.OPEN_PATHS:
            refusal = _check_agent(request)
            if refusal is not None:
                return refusal
    elif path.startswith(C.API_PREFIX + "/"):
        principal = principal_of(request) or console_reader(request)
        if principal is None:
            return error(401, "missing or unknown API token (see `gpuctl dev` or ask an admin for a token)")
        request[PRINCIPAL] = principal
    elif path.startswith(C.SERVICES_PREFIX + "/"):
        pass  # each service says whether it needs a token (coordinator/api_service.py)
    elif path == console.PREFIX or path.startswith(console.PREFIX + "/"):
        pass  # the console checks its own session (coordinator/console.py)
    elif path not in ("/healthz", api_metrics.PATH):  # /metrics checks its own scrape token
        return error(404, "not found")
    return await handler(request)


# The identity in a client certificate, parsed once per certificate rather than once per request: an agent
# keeps its connection and its certificate for days. Bounded: a fleet of this many hosts fits.
_identity = functools.lru_cache(maxsize=32768)(peer_identity)


def _check_agent(request: web.Request) -> web.Response | None:
    """Refuse unless the TLS layer verified a client certificate of our CA that is not revoked."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None:
        return error(401, "the agent API needs a client certificate of this coordinator's CA")
    host_id, serial = _identity(der)
    coord = request.app[COORDINATOR]
    if coord.accounts.is_revoked(serial) or coord.store.host_status(host_id) == HostState.REMOVED:
        return error(403, "this host was removed from the cluster: its certificate is revoked")
    request[HOST_ID] = host_id
    return None


def make_app(coordinator: Coordinator) -> web.Application:
    busy = BusyGate(coordinator.settings.busy)
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware, protocol_middleware, busy.middleware],
        client_max_size=C.MAX_REQUEST_BYTES,
    )
    app[BUSY] = busy
    app[COORDINATOR] = coordinator
    api_user.add_routes(app)
    api_agent.add_routes(app)
    api_admin.add_routes(app)
    api_secrets.add_routes(app)
    api_channel.add_routes(app)
    api_service.add_routes(app)
    api_metrics.add_routes(app)
    api_usage.add_routes(app)
    console.add_routes(app)
    api_readings.add_routes(app)
    return app
