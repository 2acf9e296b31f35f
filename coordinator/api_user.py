"""The user API: jobs and hosts, each caller confined to its project (admins see all)."""

from __future__ import annotations

from aiohttp import web

from coordinator.api_service import refuse_array, submit_service
from coordinator.array_store import ArrayRow
from coordinator.filestore import TooLarge
from coordinator.http import (
    COORDINATOR,
    PRINCIPAL,
    HTTPError,
    body,
    int_query,
    json_response,
    project_scope,
    require_admin,
    timed_chunks,
)
from coordinator.quota import QuotaExceeded
from coordinator.schedule_store import ScheduleRow
from coordinator.schedules import Target
from coordinator.service import Coordinator
from coordinator.store import HostRow
from shared import constants as C
from shared.spec import MAX_NODES, SpecError
from shared.wire import MAX_LOG_BYTES, ArraySubmitRequest, JobView, SubmitRequest

MAX_ATTEMPT = 2**31


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def submit(request: web.Request) -> web.Response:
    req = await body(request, SubmitRequest)
    assert isinstance(req, SubmitRequest)
    coord = request.app[COORDINATOR]
    _refuse_if_disk_low(coord)
    principal = request[PRINCIPAL]
    project, user = principal.project or "default", principal.name
    if req.spec.schedule is not None:  # a schedule, not a job: its runs are submitted at their times
        return json_response(coord.schedule_view(coord.submit_schedule(req.spec, project, user=user)), 201)
    if req.spec.service is not None:  # an array of replicas
        return json_response(coord.array_view(submit_service(request.app, req.spec, project, user)), 201)
    return json_response(coord.job_view(coord.submit(req.spec, project, user)), 201)


async def submit_array(request: web.Request) -> web.Response:
    """One job per index of the array, in one request and one transaction; answers the array folded."""
    req = await body(request, ArraySubmitRequest)
    assert isinstance(req, ArraySubmitRequest)
    if req.spec.schedule is not None:
        raise SpecError("schedule", "an array cannot be scheduled; submit the schedule without --array")
    refuse_array(req.spec)
    coord = request.app[COORDINATOR]
    _refuse_if_disk_low(coord)
    principal = request[PRINCIPAL]
    project = principal.project or "default"
    return json_response(
        coord.array_view(coord.submit_array(req.spec, req.array, project, principal.name)), 201
    )


def _refuse_if_disk_low(coord: Coordinator) -> None:
    problem = coord.disk.low()
    if problem is not None:
        raise HTTPError(507, problem, "disk")


async def upload_files(request: web.Request) -> web.Response:
    """A job's files as a tar.gz (the body, read in chunks: past the app's body limit, up to its own).
    Idempotent: the id is the sha256 of the bytes. Answers {"id": ...} once the archive is on disk."""
    limit = C.MAX_FILES_ARCHIVE_BYTES
    too_large = f"files: the archive is over the coordinator's limit of {limit // (1024 * 1024)} MiB"
    if (request.content_length or 0) > limit:
        raise HTTPError(413, too_large, "files")
    coord = request.app[COORDINATOR]
    _refuse_if_disk_low(coord)
    project = request[PRINCIPAL].project or "default"
    sizes: dict[str, int] = {}

    def admit(archive_id: str, size: int) -> None:
        coord.quota.admit(project, archive_id, size)
        sizes[archive_id] = size

    try:
        archive_id = await coord.files.put(timed_chunks(request, C.FILES_CHUNK_BYTES), limit, admit)
    except TooLarge:
        raise HTTPError(413, too_large, "files") from None
    except QuotaExceeded as exc:
        raise HTTPError(413, str(exc), "files") from None
    coord.quota.record(project, archive_id, sizes[archive_id])
    return json_response({"id": archive_id}, 201)


async def list_jobs(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    everything = _flag(request, "all")
    return json_response(coord.job_views(everything, project_scope(request)))


async def queue(request: web.Request) -> web.Response:
    """The waiting jobs in the scheduler's order (a member sees its own project's)."""
    return json_response(request.app[COORDINATOR].queue_entries(project_scope(request)))


async def get_job(request: web.Request) -> web.Response:
    """A job, an array (folded) or one task of it, `ARRAY[INDEX]`."""
    coord = request.app[COORDINATOR]
    return json_response(coord.view(coord.find_any(request.match_info["ref"], project_scope(request))))


async def array_tasks(request: web.Request) -> web.Response:
    """An array's tasks still to finish; `?all=1`: every task."""
    coord = request.app[COORDINATOR]
    target = coord.find_any(request.match_info["ref"], project_scope(request))
    if not isinstance(target, ArrayRow):
        raise HTTPError(400, f"job: {target.id} ({target.name}) is not an array", "job")
    return json_response(coord.task_views(target, _flag(request, "all")))


async def stop_job(request: web.Request) -> web.Response:
    """A job, or every task of an array, or one task (`ARRAY[INDEX]`), or a schedule and its run."""
    coord = request.app[COORDINATOR]
    return json_response(
        stop_target(coord, coord.find_any(request.match_info["ref"], project_scope(request)))
    )


def stop_target(coord: Coordinator, target: Target) -> JobView:
    """Stop what `find_any` found (the API's stop and the console's); answers its view now. Idempotent."""
    if isinstance(target, ArrayRow):
        coord.stop_array(target)
        return coord.array_view(target)
    if isinstance(target, ScheduleRow):
        coord.stop_schedule(target)
        return coord.schedule_view(target)
    return coord.job_view(coord.stop(target))


async def job_logs(request: web.Request) -> web.Response:
    """Log bytes from `offset`; with `follow=1`, waits up to a while for new bytes. Headers say where to
    continue (X-Next-Offset) and whether the log is complete (X-Complete: the job ended, all bytes here)."""
    coord = request.app[COORDINATOR]
    scope = project_scope(request)
    job = coord.find_job(request.match_info["ref"], scope)
    offset = int_query(request, "offset", 0, MAX_LOG_BYTES)
    max_bytes = min(int_query(request, "max_bytes", C.LOG_CHUNK_MAX_BYTES), C.LOG_CHUNK_MAX_BYTES)
    attempt = int_query(request, "attempt", 0, MAX_ATTEMPT) or None  # 0: the latest
    node = int_query(request, "node", 0, MAX_NODES - 1)
    data, complete = coord.read_logs(job, offset, max_bytes, attempt, node)
    if not data and not complete and _flag(request, "follow"):
        await coord.log_waiters.wait(job.id, C.LOG_FOLLOW_WAIT_S)
        job = coord.find_job(job.id, scope)
        data, complete = coord.read_logs(job, offset, max_bytes, attempt, node)
    headers = {
        "X-Next-Offset": str(offset + len(data)),
        "X-Complete": "1" if complete else "0",
        "X-Job-Status": job.status.value,
        "X-Exit-Code": "" if job.exit_code is None else str(job.exit_code),
    }
    return web.Response(body=data, headers=headers, content_type="application/octet-stream")


async def list_hosts(request: web.Request) -> web.Response:
    """The hosts; a coordinator-level problem (its disk under the floor) rides in X-Coordinator-Warning."""
    coord = request.app[COORDINATOR]
    response = json_response(coord.host_views())
    problem = coord.disk.low()
    if problem is not None:
        response.headers[C.COORDINATOR_WARNING_HEADER] = problem
    return response


def _flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter: `?NAME=1` or `?NAME=true`."""
    return request.query.get(name, "") in ("1", "true")


def _host_answer(host: HostRow) -> web.Response:
    """What a change to a host answers: which host, and its status now."""
    return json_response({"id": host.id, "name": host.name, "status": host.status})


async def get_host(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR]
    return json_response(coord.host_detail(request.match_info["ref"], project_scope(request)))


async def remove_host(request: web.Request) -> web.Response:
    require_admin(request)
    coord = request.app[COORDINATOR]
    force = _flag(request, "force")
    host = coord.remove_host(coord.find_host(request.match_info["ref"]), force)
    return _host_answer(host)


async def drain_host(request: web.Request) -> web.Response:
    """No new work on the host; `?stop=1` stops what runs there now (an interruption for retry)."""
    require_admin(request)
    coord = request.app[COORDINATOR]
    stop = _flag(request, "stop")
    host = coord.drain(coord.find_host(request.match_info["ref"]), stop)
    return _host_answer(host)


async def undrain_host(request: web.Request) -> web.Response:
    require_admin(request)
    coord = request.app[COORDINATOR]
    host = coord.undrain(coord.find_host(request.match_info["ref"]))
    return _host_answer(host)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_post(f"{C.API_PREFIX}/jobs", submit)
    app.router.add_post(f"{C.API_PREFIX}/arrays", submit_array)
    app.router.add_post(f"{C.API_PREFIX}/files", upload_files)
    app.router.add_get(f"{C.API_PREFIX}/jobs", list_jobs)
    app.router.add_get(f"{C.API_PREFIX}/queue", queue)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}", get_job)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/tasks", array_tasks)
    app.router.add_post(f"{C.API_PREFIX}/jobs/{{ref}}/stop", stop_job)
    app.router.add_get(f"{C.API_PREFIX}/jobs/{{ref}}/logs", job_logs)
    app.router.add_get(f"{C.API_PREFIX}/hosts", list_hosts)
    app.router.add_get(f"{C.API_PREFIX}/hosts/{{ref}}", get_host)
    app.router.add_post(f"{C.API_PREFIX}/hosts/{{ref}}/remove", remove_host)
    app.router.add_post(f"{C.API_PREFIX}/hosts/{{ref}}/drain", drain_host)
    app.router.add_post(f"{C.API_PREFIX}/hosts/{{ref}}/undrain", undrain_host)
