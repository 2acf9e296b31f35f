"""The channel's routes: the agents' WebSocket (`GET /agent/v1/channel`), and the users' ways into a running
job over it: `GET /api/v1/jobs/{ref}/exec`, `GET /api/v1/jobs/{ref}/forward?port=P` and, into a dev
environment's sshd, `GET /api/v1/jobs/{ref}/ssh?key=PUBLIC_KEY` (WebSockets that carry one stream each, in the
channel's frames), `GET /api/v1/jobs/{ref}/ssh-host` (whom to log in as, the host key to pin), and the audit
log (`GET /api/v1/audit`, admins).

Only members of the job's project and admins may reach into a job (403 otherwise). Everything that can be
refused is refused before the upgrade, as an HTTP error with one JSON line; what happens after (the agent
refusing, the channel dropping) ends the stream with a Close frame that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator

import msgspec
from aiohttp import web

from coordinator import work_slot
from coordinator.audit import AuditLog
from coordinator.channels import AgentChannel, Channels, NoChannel, relay
from coordinator.dev_envs import Sessions, ssh_host, stop_idle
from coordinator.http import (
    COORDINATOR,
    HOST_ID,
    PRINCIPAL,
    HTTPError,
    int_query,
    json_response,
    require_admin,
)
from coordinator.store import AllocRow, JobRow
from shared import constants as C
from shared.aio import cancel_and_wait
from shared.channel import (
    MAX_FRAME_BYTES,
    PUBLIC_KEY_PATTERN,
    BadFrame,
    Close,
    ExecOpen,
    Open,
    SshOpen,
    TcpOpen,
    decode_to_agent,
    encode,
)
from shared.spec import MAX_NODES
from shared.spec.dev_env import is_dev
from shared.states import AllocState, JobState

CHANNELS: web.AppKey[Channels] = web.AppKey("channels", Channels)
AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)
SESSIONS: web.AppKey[Sessions] = web.AppKey("sessions", Sessions)
HEARTBEAT_S = 20.0  # pings on every channel and stream: a silent peer is noticed, and proxies see traffic
FIRST_FRAME_TIMEOUT_S = 30.0


async def agent_channel(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    work_slot.release_current()  # an open channel is idle most of the time: it holds no busy slot
    await request.app[CHANNELS].serve(request[HOST_ID], ws)
    return ws


async def job_exec(request: web.Request) -> web.StreamResponse:
    """Run a command in the job (its first frame: Open with ExecOpen); every exec is audited."""
    job, alloc, channel = _target(request)
    ws = await _accept(request)
    opening = await _first_frame(ws)
    if opening is None:
        return ws
    opening = msgspec.structs.replace(opening, alloc_id=alloc.id)
    audit = request.app[AUDIT]
    entry = audit.started(
        request[PRINCIPAL].name, job.project, job.id, alloc.node, alloc.host_id, list(opening.argv)
    )
    close = Close(1, error="the caller went away")  # its handler cancelled: the end it is audited with
    try:
        with _session(request, job.id):
            close = await _carry(ws, channel, opening)
    finally:
        audit.ended(entry, close.exit_code, close.error)
    return ws


async def job_ssh(request: web.Request) -> web.StreamResponse:
    """A connection to a dev environment's sshd, which first lets the user's `key` in (`gpuctl ssh-proxy`);
    every session is audited."""
    key = request.query.get("key", "")
    if not re.fullmatch(PUBLIC_KEY_PATTERN, key):
        raise HTTPError(400, "key: expected an ssh-ed25519 public key, as `gpuctl ssh` makes", "key")
    job, alloc, channel = _dev_target(request)
    ws = await _accept(request)
    audit = request.app[AUDIT]
    entry = audit.started(request[PRINCIPAL].name, job.project, job.id, 0, alloc.host_id, [], kind="ssh")
    # ssh ends its ProxyCommand as it exits, often before the sshd's end reaches here: the connection's
    # end (this handler cancelled) is a session's usual end, not an error
    error = ""
    try:
        with _session(request, job.id):
            error = (await _carry(ws, channel, SshOpen(alloc.id, key))).error
    finally:
        audit.ended(entry, None, error)
    return ws


async def job_ssh_host(request: web.Request) -> web.Response:
    job, _, _ = _dev_target(request)
    return json_response(ssh_host(job, request.app[COORDINATOR].secrets))


def _dev_target(request: web.Request) -> tuple[JobRow, AllocRow, AgentChannel]:
    """`_target`, for a dev environment only (a task runs no sshd to reach): 400 otherwise, and 409 for
    one placed when every sshd port of its host was taken."""
    job, alloc, channel = _target(request)
    if not is_dev(job.spec):
        raise HTTPError(
            400, f"job: {job.id} ({job.name}) is no dev environment (type: dev-environment)", "job"
        )
    if not alloc.ssh_port:
        raise HTTPError(409, f"job: {job.id} ({job.name}) has no sshd: every ssh port of its host was taken")
    return job, alloc, channel


@contextlib.contextmanager
def _session(request: web.Request, job_id: str) -> Iterator[None]:
    """An open session: the job is not idle meanwhile (coordinator/dev_envs.py)."""
    sessions = request.app[SESSIONS]
    sessions.opened(job_id)
    try:
        yield
    finally:
        sessions.closed(job_id)


async def job_forward(request: web.Request) -> web.StreamResponse:
    """One TCP connection to the job's `port`."""
    port = int_query(request, "port", 0, 65535)
    if port == 0:
        raise HTTPError(400, "port: expected a port between 1 and 65535", "port")
    _, alloc, channel = _target(request)
    ws = await _accept(request)
    await _carry(ws, channel, TcpOpen(alloc.id, port))
    return ws


async def audit_log(request: web.Request) -> web.Response:
    require_admin(request)
    job = request.query.get("job") or None
    limit = int_query(request, "limit", 100, 1000)
    return json_response(request.app[AUDIT].entries(job, limit))


def _target(request: web.Request) -> tuple[JobRow, AllocRow, AgentChannel]:
    """The job, its running allocation on the node asked for, and its host's channel; else an HTTPError:
    403 for a caller outside the job's project, 409 for a job not running, 503 for a host with no channel."""
    coord = request.app[COORDINATOR]
    job = coord.find_job(request.match_info["ref"])
    principal = request[PRINCIPAL]
    if not principal.admin and principal.project != job.project:
        raise HTTPError(403, "job: only members of the job's project, and admins, may reach into it", "job")
    node = int_query(request, "node", 0, MAX_NODES - 1)
    if job.status is not JobState.RUNNING:
        raise HTTPError(409, f"job {job.id} ({job.name}) is {job.status.value}, not running", "job")
    latest = coord.store.latest_allocation(job.id)
    attempt = [a for a in coord.store.allocations_of(job.id) if latest and a.attempt == latest.attempt]
    alloc = next((a for a in attempt if a.node == node), None)
    if alloc is None:
        raise HTTPError(400, f"node: job {job.id} has {len(attempt)} node(s); no node {node}", "node")
    if alloc.state is not AllocState.RUNNING:
        raise HTTPError(409, f"node {node} of job {job.id} is {alloc.state.value}, not running", "node")
    try:
        return job, alloc, request.app[CHANNELS].get(alloc.host_id)
    except NoChannel as exc:
        raise HTTPError(503, str(exc)) from None


async def _accept(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    work_slot.release_current()  # a stream waits on people and networks, not on this coordinator
    return ws


async def _first_frame(ws: web.WebSocketResponse) -> ExecOpen | None:
    """The exec's command and terminal, which the client sends first; None (the stream refused) if not."""
    try:
        message = await ws.receive(timeout=FIRST_FRAME_TIMEOUT_S)
        frame = decode_to_agent(message.data) if isinstance(message.data, bytes) else None
    except (TimeoutError, BadFrame) as exc:
        frame, error = None, str(exc) or "no command in time"
    else:
        error = "the first frame must open an exec stream"
    if isinstance(frame, Open) and isinstance(frame.what, ExecOpen):
        return frame.what
    await _refuse(ws, error)
    return None


async def _carry(
    ws: web.WebSocketResponse, channel: AgentChannel, opening: ExecOpen | TcpOpen | SshOpen
) -> Close:
    try:
        stream = channel.open()
    except NoChannel as exc:
        await _refuse(ws, str(exc))
        return Close(1, error=str(exc))
    try:
        close = await relay(stream, ws, opening)
    except ConnectionError as exc:  # the channel dropped as the stream opened
        close = Close(1, error=f"host {channel.host_id}: channel dropped: {exc}")
        await _refuse(ws, close.error)
    await ws.close()
    return close


async def _refuse(ws: web.WebSocketResponse, error: str) -> None:
    try:
        await ws.send_bytes(encode(Close(1, error=error)))
    except ConnectionError:
        pass
    await ws.close()


def add_routes(app: web.Application) -> None:
    coord = app[COORDINATOR]
    app[CHANNELS] = channels = Channels()

    async def close_channels(_app: web.Application) -> None:
        await channels.close_all()

    app.on_shutdown.append(close_channels)
    app[AUDIT] = AuditLog(coord.store)
    app[SESSIONS] = sessions = Sessions()

    async def idle_watch(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(stop_idle(coord, sessions), name="stop-idle-dev-environments")
        yield
        await cancel_and_wait(task)

    app.cleanup_ctx.append(idle_watch)
    app.router.add_get(f"{C.AGENT_PREFIX}/channel", agent_channel)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/exec", job_exec)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/forward", job_forward)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/ssh", job_ssh)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/ssh-host", job_ssh_host)
    app.router.add_get(f"{C.API_PREFIX}/audit", audit_log)
