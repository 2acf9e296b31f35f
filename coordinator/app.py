"""The coordinator's HTTP surface: the user API (bearer tokens) and the agent API (client certificates).

One TLS port serves both. Agent routes accept only a client certificate of this CA (the TLS layer verifies
it; the handler reads the host id from it); user routes accept only a known bearer token. Errors answer
JSON `{"error": ..., "field": ...}` with a 4xx status, never a traceback.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from coordinator.service import Ambiguous, Coordinator, NotFound
from shared import constants as C
from shared.spec import SpecError
from shared.tls import peer_identity
from shared.wire import ErrorBody, LogAck, SubmitRequest, SyncRequest

log = logging.getLogger("gpuctl.coordinator")

COORDINATOR: web.AppKey[Coordinator] = web.AppKey("coordinator", Coordinator)
HOST_ID: web.RequestKey[str] = web.RequestKey("host_id", str)  # the agent's certificate common name
ROLE: web.RequestKey[str] = web.RequestKey("role", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


def error(status: int, message: str, field: str = "") -> web.Response:
    return json_response(ErrorBody(error=message, field=field), status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except msgspec.ValidationError as exc:
        return error(400, f"invalid request: {exc}", _field_of(str(exc)))
    except msgspec.DecodeError as exc:
        return error(400, f"malformed JSON: {exc}")
    except SpecError as exc:
        return error(400, str(exc), exc.field)
    except NotFound as exc:
        return error(404, str(exc))
    except Ambiguous as exc:
        return error(409, str(exc))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error(500, "internal error; the coordinator's log has the details")


def _field_of(message: str) -> str:
    # msgspec says "... - at `$.spec.resources.gpu`"
    return message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else ""


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith(C.AGENT_PREFIX + "/"):
        der = _peer_der(request)
        if der is None:
            return error(401, "the agent API needs a client certificate of this coordinator's CA")
        request[HOST_ID] = peer_identity(der)[0]
    elif path.startswith(C.API_PREFIX + "/"):
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        role = request.app[COORDINATOR].store.token_role(hash_token(token)) if token else None
        if role is None:
            return error(401, "missing or unknown API token (see `gpuctl dev` or ask an admin for a token)")
        request[ROLE] = role
    elif path != "/healthz":
        return error(404, "not found")
    return await handler(request)


def _peer_der(request: web.Request) -> bytes | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None


async def _body(request: web.Request, type_: type) -> object:
    return msgspec.json.decode(await request.read(), type=type_)


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise web.HTTPBadRequest(
            body=msgspec.json.encode(ErrorBody(f"{name}: expected a non-negative integer", name)),
            content_type="application/json",
        )
    return int(raw)


# --- user API -------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def submit(request: web.Request) -> web.Response:
    body = await _body(request, SubmitRequest)
    assert isinstance(body, SubmitRequest)
    coord = request.app[COORDINATOR]
    return json_response(coord.job_view(coord.submit(body.spec)), 201)


async def list_jobs(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    everything = request.query.get("all", "") in ("1", "true")
    return json_response([coord.job_view(j) for j in coord.store.list_jobs(everything)])


async def get_job(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    return json_response(coord.job_view(coord.find_job(request.match_info["ref"])))


async def stop_job(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    return json_response(coord.job_view(coord.stop(coord.find_job(request.match_info["ref"]))))


async def job_logs(request: web.Request) -> web.Response:
    """Log bytes from `offset`; with `follow=1`, waits up to a while for new bytes. Headers say where to
    continue (X-Next-Offset) and whether the log is complete (X-Complete: the job ended, all bytes here)."""
    coord = request.app[COORDINATOR]
    job = coord.find_job(request.match_info["ref"])
    offset = _int_query(request, "offset", 0)
    max_bytes = min(_int_query(request, "max_bytes", C.LOG_CHUNK_MAX_BYTES), C.LOG_CHUNK_MAX_BYTES)
    data, complete = coord.read_logs(job, offset, max_bytes)
    if not data and not complete and request.query.get("follow") in ("1", "true"):
        await coord.log_waiters.wait(job.id, C.LOG_FOLLOW_WAIT_S)
        job = coord.find_job(job.id)
        data, complete = coord.read_logs(job, offset, max_bytes)
    headers = {
        "X-Next-Offset": str(offset + len(data)),
        "X-Complete": "1" if complete else "0",
        "X-Job-Status": job.status.value,
        "X-Exit-Code": "" if job.exit_code is None else str(job.exit_code),
    }
    return web.Response(body=data, headers=headers, content_type="application/octet-stream")


async def list_hosts(request: web.Request) -> web.Response:
    return json_response(request.app[COORDINATOR].host_views())


async def get_host(request: web.Request) -> web.Response:
    return json_response(request.app[COORDINATOR].host_detail(request.match_info["ref"]))


# --- agent API ------------------------------------------------------------------------------------------


async def agent_sync(request: web.Request) -> web.Response:
    body = await _body(request, SyncRequest)
    assert isinstance(body, SyncRequest)
    return json_response(await request.app[COORDINATOR].sync(request[HOST_ID], body))


async def agent_logs(request: web.Request) -> web.Response:
    offset = _int_query(request, "offset", 0)
    data = await request.read()
    if len(data) > C.LOG_CHUNK_MAX_BYTES:
        return error(413, f"log chunk of {len(data)} bytes is over {C.LOG_CHUNK_MAX_BYTES}")
    coord = request.app[COORDINATOR]
    acked = coord.append_log(request[HOST_ID], request.match_info["alloc_id"], offset, data)
    return json_response(LogAck(acked=acked))


def make_app(coordinator: Coordinator) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=C.MAX_REQUEST_BYTES
    )
    app[COORDINATOR] = coordinator
    app.router.add_get("/healthz", healthz)
    app.router.add_post(f"{C.API_PREFIX}/jobs", submit)
    app.router.add_get(f"{C.API_PREFIX}/jobs", list_jobs)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}", get_job)
    app.router.add_post(f"{C.API_PREFIX}/jobs/{{ref}}/stop", stop_job)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/logs", job_logs)
    app.router.add_get(f"{C.API_PREFIX}/hosts", list_hosts)
    app.router.add_get(f"{C.API_PREFIX}/hosts/{{ref}}", get_host)
    app.router.add_post(f"{C.AGENT_PREFIX}/sync", agent_sync)
    app.router.add_post(f"{C.AGENT_PREFIX}/allocations/{{alloc_id}}/logs", agent_logs)
    return app
