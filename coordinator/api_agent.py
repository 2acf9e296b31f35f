"""The agent API. Every route but the CA download and enrollment needs a client certificate of this CA
whose serial is not revoked; the host id is the certificate's common name."""

from __future__ import annotations

from aiohttp import web

from coordinator.accounts import Refused
from coordinator.enroll import RateLimiter, enroll, renew
from coordinator.http import COORDINATOR, HOST_ID, HTTPError, body, int_query, json_response, read_body
from shared import constants as C
from shared.wire import MAX_LOG_BYTES, EnrollRequest, LogAck, RenewRequest, SyncRequest

OPEN_PATHS = (f"{C.AGENT_PREFIX}/ca", f"{C.AGENT_PREFIX}/enroll")
ENROLL_LIMIT: web.AppKey[RateLimiter] = web.AppKey("enroll_limit", RateLimiter)


async def ca(request: web.Request) -> web.Response:
    """The CA certificate, public: a joining agent checks it against the pin in its join string."""
    return web.Response(body=request.app[COORDINATOR].ca.cert_pem, content_type="application/x-pem-file")


async def agent_enroll(request: web.Request) -> web.Response:
    if not request.app[ENROLL_LIMIT].allow(request.remote or "?"):
        raise HTTPError(429, "too many enrollment attempts; wait a minute")
    req = await body(request, EnrollRequest)
    assert isinstance(req, EnrollRequest)
    coord = request.app[COORDINATOR]
    try:
        answer = enroll(coord.accounts, coord.store, coord.ca, req, coord.settings.agent_cert_ttl_s)
    except Refused as exc:
        raise HTTPError(403, str(exc), "token") from None
    return json_response(answer, 201)


async def agent_renew(request: web.Request) -> web.Response:
    req = await body(request, RenewRequest)
    assert isinstance(req, RenewRequest)
    coord = request.app[COORDINATOR]
    try:
        answer = renew(
            coord.accounts, coord.store, coord.ca, request[HOST_ID], req, coord.settings.agent_cert_ttl_s
        )
    except Refused as exc:
        raise HTTPError(403, str(exc)) from None
    return json_response(answer)


async def agent_sync(request: web.Request) -> web.Response:
    req = await body(request, SyncRequest)
    assert isinstance(req, SyncRequest)
    return json_response(await request.app[COORDINATOR].sync(request[HOST_ID], req))


async def agent_logs(request: web.Request) -> web.Response:
    offset = int_query(request, "offset", 0, MAX_LOG_BYTES - C.LOG_CHUNK_MAX_BYTES)
    if (request.content_length or 0) > C.LOG_CHUNK_MAX_BYTES:
        raise HTTPError(413, f"log chunk over {C.LOG_CHUNK_MAX_BYTES} bytes")
    data = await read_body(request)
    if len(data) > C.LOG_CHUNK_MAX_BYTES:
        raise HTTPError(413, f"log chunk of {len(data)} bytes is over {C.LOG_CHUNK_MAX_BYTES}")
    coord = request.app[COORDINATOR]
    try:
        acked = coord.append_log(request[HOST_ID], request.match_info["alloc_id"], offset, data)
    except OSError as exc:  # a full disk: the agent keeps the bytes in its spool and tries again later
        message = f"coordinator disk {coord.state_dir}: cannot store log bytes: {exc.strerror}"
        raise HTTPError(507, message) from None
    return json_response(LogAck(acked=acked))


async def agent_files(request: web.Request) -> web.StreamResponse:
    """A job's files archive by id. Any enrolled host may fetch any archive: ids are content hashes that
    only the specs of allocations carry, and hosts run every project's work anyway."""
    files = request.app[COORDINATOR].files
    archive_id = request.match_info["archive_id"]
    size = files.size(archive_id)
    if size is None:
        raise HTTPError(404, f"no files archive {archive_id[:64]!r}")
    response = web.StreamResponse(headers={"Content-Type": "application/gzip"})
    response.content_length = size
    await response.prepare(request)
    async for data in files.chunks(archive_id):
        await response.write(data)
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app[ENROLL_LIMIT] = RateLimiter()
    app.router.add_get(f"{C.AGENT_PREFIX}/ca", ca)
    app.router.add_post(f"{C.AGENT_PREFIX}/enroll", agent_enroll)
    app.router.add_post(f"{C.AGENT_PREFIX}/renew", agent_renew)
    app.router.add_post(f"{C.AGENT_PREFIX}/sync", agent_sync)
    app.router.add_post(f"{C.AGENT_PREFIX}/allocations/{{alloc_id}}/logs", agent_logs)
    app.router.add_get(f"{C.AGENT_PREFIX}/files/{{archive_id}}", agent_files)
