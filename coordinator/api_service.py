"""Services (`type: service`): submitted as a job array of `replicas` jobs, and served at
`https://COORDINATOR/services/PROJECT/NAME/`, each request forwarded over the channel to a ready replica,
round robin (coordinator/replicas.py), as HTTP/1.1 on a tcp stream (coordinator/service_http.py).

The prefix `/services/PROJECT/NAME` is taken off the path before it reaches the replica (dstack's
`strip_prefix`, true by default; `X-Forwarded-Prefix` names it), so an application serves at `/` unchanged.
With `auth: true` (the default) a request needs a gpuctl token (`Authorization: Bearer`, as the CLI sends) of
a member of the service's project or of an admin: 401 without one, 403 for anyone else; a gpuctl token never
reaches the replica, not even one sent to a service with `auth: false`. A path with a dot segment (`..`,
`%2e%2e`) or a control character is refused: the replica sees only paths under its own root. Only the
service's own replicas' port is ever dialled.

A request that cannot reach its replica (the port refuses, the channel drops before an answer) is tried
once more on the next ready replica when it is safe to: an idempotent method, with no body or one small
enough to be held whole for it. Any other request is streamed both ways and never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict

from coordinator.api_channel import CHANNELS
from coordinator.array_store import ArrayRow
from coordinator.channels import NoChannel, RelayStream
from coordinator.console_sessions import COOKIE
from coordinator.http import (
    COORDINATOR,
    PRINCIPAL,
    HTTPError,
    principal_of,
    read_body,
    timed_chunks,
    token_holder,
)
from coordinator.replicas import Crowded, Replica, Replicas
from coordinator.service_http import (
    ResponseHead,
    Upstream,
    UpstreamError,
    body_pieces,
    chunk,
    content_length,
    hop_by_hop,
    request_head,
    response_head,
    response_headers,
)
from shared import constants as C
from shared.channel import MAX_DATA_BYTES, Close, Open, TcpOpen
from shared.spec import ServiceSpec, SpecError, TaskSpec

log = logging.getLogger("gpuctl.coordinator")

REPLICAS: web.AppKey[Replicas] = web.AppKey("replicas", Replicas)
HELD_BODY_BYTES = 64 * 1024  # a body up to this size is held whole, so that its request may be retried
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
# Who called and how: this proxy says it; a caller's own claim (RFC 7239's, or nginx's X-Real-IP) never passes
_NOT_FORWARDED = frozenset(
    (
        "forwarded",
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-prefix",
    )
)
_REACH_CONSOLE = frozenset(("cross-origin-opener-policy", "service-worker-allowed"))  # `_answer_headers`
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def submit_service(app: web.Application, spec: TaskSpec, project: str, user: str = "") -> ArrayRow:
    """One job per replica, as an array. Refused (409) while the project runs a service of that name: its
    URL names one service."""
    assert spec.service is not None
    if spec.name is not None and app[REPLICAS].find(project, spec.name) is not None:
        raise HTTPError(409, f"service {spec.name} already runs in project {project}; stop it first", "name")
    return app[COORDINATOR].submit_array(spec, f"0-{spec.service.replicas - 1}", project, user)


def refuse_array(spec: TaskSpec) -> None:
    """A service's replicas are its array already."""
    if spec.service is not None:
        raise SpecError("replicas", "a service's replicas are its array: submit it without --array")


async def redirect(request: web.Request) -> web.StreamResponse:
    """`/services/P/N` to `/services/P/N/`: relative links in the application's pages then resolve."""
    query = request.rel_url.raw_query_string
    location = request.rel_url.raw_path + "/" + (f"?{query}" if query else "")
    raise web.HTTPPermanentRedirect(location)


async def serve(request: web.Request) -> web.StreamResponse:
    project, name = request.match_info["project"], request.match_info["name"]
    replicas = request.app[REPLICAS]
    service = replicas.find(project, name)
    if service is None:
        raise HTTPError(404, f"no service {name} runs in project {project}")
    spec = service.spec.service
    assert spec is not None
    if spec.auth:
        _authorize(request, service.project)
    target = _target(request, f"{C.SERVICES_PREFIX}/{project}/{name}", spec.strip_prefix)
    held = await _held_body(request)
    failure = ""
    async with contextlib.aclosing(replicas.in_turn(service)) as turns:
        async for replica in turns:
            log.debug("service %s/%s: %s %s to %s", project, name, request.method, target, replica.job.name)
            try:
                return await _forward(request, replicas, replica, target, held, spec)
            except UpstreamError as exc:
                replicas.failed(service, replica)
                log.info("service %s/%s: replica %s failed: %s", project, name, replica.job.name, exc)
                retry = not failure and not exc.answered and held is not None
                failure = f"service {name}: replica {replica.job.name}: {exc}"
                if not retry:
                    break
    if failure:
        raise HTTPError(502, failure)
    running = len(replicas.running(service))
    raise HTTPError(503, f"service {name}: no replica is ready ({running} of {spec.replicas} running)")


def _authorize(request: web.Request, project: str) -> None:
    principal = principal_of(request)
    if principal is None:
        raise HTTPError(401, "this service needs a gpuctl API token (Authorization: Bearer TOKEN)")
    request[PRINCIPAL] = principal
    if not principal.admin and principal.project != project:
        raise HTTPError(403, "only members of the service's project, and admins, may call it")


def _target(request: web.Request, prefix: str, strip: bool) -> str:
    """The request target the replica gets: the raw path, without `prefix` when `strip`, and the query.
    HTTPError 400 for a path that could climb out of the service's root."""
    raw_path = request.rel_url.raw_path
    if not raw_path.startswith(prefix + "/"):  # the route matched a decoded path that the raw one is not
        raise HTTPError(400, "path: not a path under the service", "path")
    for segment in raw_path.split("/"):
        decoded = unquote(segment)
        if decoded in (".", "..") or _BAD_PATH_CHARS.search(decoded):
            raise HTTPError(400, "path: dot segments and control characters are not forwarded", "path")
    path = raw_path[len(prefix) :] if strip else raw_path
    query = request.rel_url.raw_query_string
    return path + (f"?{query}" if query else "")


async def _held_body(request: web.Request) -> bytes | None:
    """The whole body of a request that may be retried (b"" for none), else None: it is streamed."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if request.method not in IDEMPOTENT or length is None or length > HELD_BODY_BYTES:
        return None
    return await read_body(request)


async def _forward(
    request: web.Request,
    replicas: Replicas,
    replica: Replica,
    target: str,
    held: bytes | None,
    spec: ServiceSpec,
) -> web.StreamResponse:
    """Carry one request to the replica and its answer back. Raises UpstreamError when the replica could
    not be reached or broke before any of the answer reached the user, HTTPError 503 when calls to services
    hold their whole share of its host's streams."""
    try:
        with replicas.stream(replica) as stream:
            return await _exchange(request, stream, replica, target, held, spec)
    except Crowded as exc:
        raise HTTPError(503, f"service {request.match_info['name']}: {exc}") from None
    except NoChannel as exc:
        raise UpstreamError(str(exc), answered=False) from None


async def _exchange(
    request: web.Request,
    stream: RelayStream,
    replica: Replica,
    target: str,
    held: bytes | None,
    spec: ServiceSpec,
) -> web.StreamResponse:
    sending: asyncio.Task[HTTPError | None] | None = None
    try:
        await stream.channel.send(Open(stream.id, TcpOpen(replica.alloc.id, spec.port)))
        chunked = held is None and request.content_length is None
        framing = (
            "Transfer-Encoding: chunked" if chunked else f"Content-Length: {request.content_length or 0}"
        )
        head = request_head(
            request.method, target, _headers(request, spec), framing if request.body_exists else ""
        )
        await stream.send_data(head + (held or b""))
        if held is None:
            sending = asyncio.create_task(_send_body(request, stream, chunked))
        return await _answer(request, Upstream(stream))
    except UpstreamError:
        if sending is not None and sending.done() and (refusal := sending.result()) is not None:
            raise refusal from None  # the caller's body failed, not the replica
        raise
    except ConnectionError as exc:  # the channel dropped as the request went up
        raise UpstreamError(f"its host's channel dropped: {exc}", answered=False) from None
    finally:
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        with contextlib.suppress(ConnectionError):
            await stream.channel.send(Close(stream.id))


def _headers(request: web.Request, spec: ServiceSpec) -> list[tuple[str, str]]:
    """The user's headers less hop-by-hop ones, the framing, a gpuctl token (any token with auth) and the
    forwarding headers the user may not set; then the forwarding headers this proxy sets."""
    given = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers]
    drop = hop_by_hop(given) | {"content-length", "host", "expect"} | _NOT_FORWARDED
    if spec.auth:
        drop.add("authorization")
    kept = [
        (name, value) for name, value in given if name.lower() not in drop and not _ours(request, name, value)
    ]
    kept = _without_session(kept)
    forwarded = [
        ("Host", request.host),
        ("X-Forwarded-For", request.remote or ""),
        ("X-Forwarded-Host", request.host),
        ("X-Forwarded-Proto", request.scheme),
    ]
    if spec.strip_prefix:
        forwarded.append(
            (
                "X-Forwarded-Prefix",
                f"{C.SERVICES_PREFIX}/{request.match_info['project']}/{request.match_info['name']}",
            )
        )
    return kept + forwarded


def _ours(request: web.Request, name: str, value: str) -> bool:
    """Whether a header is a gpuctl token, sent even where the service asks for none (a script that sends it
    everywhere): the replica, whose code any member of its project wrote, could act as its caller with it."""
    return name.lower() == "authorization" and token_holder(request, value) is not None


def _without_session(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The Cookie headers less the console's session (coordinator/console_sessions.py): a service shares the
    console's origin, so a browser logged in sends its session with every call to a service, and the
    replica could then read and act in the console as its caller. The replica's own cookies pass."""
    kept = []
    for name, value in headers:
        if name.lower() == "cookie":
            value = "; ".join(c.strip() for c in value.split(";") if c.split("=", 1)[0].strip() != COOKIE)
            if not value:
                continue
        kept.append((name, value))
    return kept


def _answer_headers(head: ResponseHead) -> CIMultiDict[str]:
    """The replica's answer's headers, less those that would reach into the console on the shared origin: a
    cookie under the console's session's name (its author's own session, to have the caller act in the
    console as its author), a Cross-Origin-Opener-Policy (the console's pages send `same-origin`, so that a
    service's page cannot read a console window it opens; with the same policy it could), and
    Service-Worker-Allowed (a service worker whose scope took in /ui/ would answer the console's pages)."""
    return CIMultiDict(
        (name, value)
        for name, value in response_headers(head).items()
        if name.lower() not in _REACH_CONSOLE
        and (name.lower() != "set-cookie" or value.split("=", 1)[0].strip() != COOKIE)
    )


async def _send_body(request: web.Request, stream: RelayStream, chunked: bool) -> HTTPError | None:
    """The user's body up to the replica as it comes, at the stream's credit. A body that stalls ends the
    stream (the replica's answer would never come), and is the answer (408). A channel that drops ends the
    stream itself (coordinator/channels.py)."""
    try:
        async for piece in timed_chunks(request, MAX_DATA_BYTES):
            await stream.send_data(chunk(piece) if chunked else piece)
        if chunked:
            await stream.send_data(chunk(b""))
    except HTTPError as refusal:
        stream.outbox.put_nowait(Close(stream.id, error=refusal.message))
        return refusal
    except ConnectionError:
        pass
    return None


async def _answer(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    """The replica's answer to the user as it comes. Once its head is sent, a break can only cut the
    connection: the user sees a truncated answer, never a complete-looking one."""
    head = await response_head(upstream)
    response = web.StreamResponse(status=head.status, reason=head.reason, headers=_answer_headers(head))
    length = content_length(head)
    if length is not None:
        response.content_length = length
    try:
        await response.prepare(request)
        async for piece in body_pieces(upstream, head, request.method, MAX_DATA_BYTES):
            await response.write(piece)
        await response.write_eof()
    except UpstreamError as exc:
        log.info("%s %s: the replica's answer broke: %s", request.method, request.path, exc)
        _cut(request)
    except ConnectionError:  # the user went away
        _cut(request)
    return response


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def add_routes(app: web.Application) -> None:
    coord = app[COORDINATOR]
    app[REPLICAS] = Replicas(coord.store, coord.arrays, app[CHANNELS])
    base = f"{C.SERVICES_PREFIX}/{{project:[a-z][a-z0-9-]{{0,62}}}}/{{name:[a-z][a-z0-9-]{{0,59}}}}"
    app.router.add_route("*", base, redirect)
    app.router.add_route("*", base + "/{tail:.*}", serve)
