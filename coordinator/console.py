"""The web console at `/ui/`: jobs, a job's page (its log tail and GPU readings live), hosts and their
devices' health, and the queue, as server-rendered HTML; stopping a job and draining a host are its only
actions. Read-mostly, for people; scripts use the API.

Log in with an API token (coordinator/console_sessions.py): the console then acts with that token's rights,
through the same functions as the API (a member sees its project's jobs; draining needs an admin). Its script
(console_static/console.js, no build step, no CDN) reads two GET routes of the user API with the session's
cookie and CSRF token: a job's log and its readings. The pages allow no inline script or style
(Content-Security-Policy). Services share the console's origin (coordinator/api_service.py), so the console
answers only a browser's window, never a page's script or frame (`from_script`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from coordinator import console_pages as pages
from coordinator.accounts import Refused
from coordinator.api_user import stop_target
from coordinator.console_sessions import (
    COOKIE,
    SESSIONS,
    Session,
    Sessions,
    clear_cookie,
    csrf_ok,
    session_of,
    set_cookie,
)
from coordinator.http import COORDINATOR, PRINCIPAL, HTTPError, project_scope, require_admin
from coordinator.service import Ambiguous, Busy, NotFound
from coordinator.store import JobRow

PREFIX = "/ui"
LOG_TAIL_BYTES = 64 * 1024  # a job's page starts its log this far from the end
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SCRIPT_REFUSED = "the console's pages open in a browser's window, not from a page's script"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}  # console_static/, package data

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Page = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def html(body: str, status: int = 200) -> web.Response:
    response = web.Response(text=body, status=status, content_type="text/html")
    response.headers.update(
        {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",  # a page shows one user's jobs
            # a window that a service's page (same origin) opens is not its to read (coordinator/api_service.py)
            "Cross-Origin-Opener-Policy": "same-origin",
        }
    )
    return response


def see_other(location: str) -> web.Response:
    """After a POST, or to the login: the browser GETs `location`."""
    return web.Response(status=303, headers={"Location": location})


def from_script(request: web.Request) -> bool:
    """A request that a page's script made (fetch), or a frame's, as the browser tells (Sec-Fetch-Mode and
    -Dest), not the browser opening a page of the console. Services share the console's origin, so a
    service's page, which any member of its project wrote, could read the console's pages (their CSRF tokens
    with them) as its visitor: the console answers only navigations of the window. A client that sends no
    Sec-Fetch headers (curl, an old browser) is taken at its word."""
    mode, dest = (
        request.headers.get("Sec-Fetch-Mode", "navigate"),
        request.headers.get("Sec-Fetch-Dest", "document"),
    )
    return mode != "navigate" or dest != "document"


def cross_site(request: web.Request) -> bool:
    """A form that another site's page posted, as the browser tells (Sec-Fetch-Site). The session's cookie
    is not sent with one (SameSite=Strict) and its CSRF token is checked; this also keeps another site from
    logging a browser in with the site's own token (login CSRF), where there is no session yet."""
    return request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none")


async def form_refusal(request: web.Request, session: Session) -> str:
    """Why an action's form is refused ("" if it is not): posted from another site, or without the
    session's CSRF token."""
    if cross_site(request):
        return "a form from another site's page is refused"
    if not csrf_ok(session, str((await request.post()).get("csrf", ""))):
        return "the form's CSRF token is missing or out of date; reload the page and try again"
    return ""


def logged_in(handler: Page) -> Handler:
    """A console page or action: without a session, a page sends to the login and an action is refused; an
    action must carry the session's CSRF token. The request then holds the session's principal, as an API
    request holds its token's, and errors answer as pages."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        session = session_of(request)
        if from_script(request):
            return html(pages.error_page(403, SCRIPT_REFUSED, None, ""), 403)
        if session is None:
            if request.method == "GET":
                return see_other(f"{PREFIX}/login")
            return html(pages.error_page(403, "log in first", None, ""), 403)
        refusal = await form_refusal(request, session) if request.method == "POST" else ""
        if refusal:
            return html(pages.error_page(403, refusal, session.principal, session.csrf), 403)
        request[PRINCIPAL] = session.principal
        try:
            return await handler(request, session)
        except HTTPError as exc:
            status, message = exc.status, exc.message
        except Refused as exc:
            status, message = 403, str(exc)
        except NotFound as exc:
            status, message = 404, str(exc)
        except (Ambiguous, Busy) as exc:
            status, message = 409, str(exc)
        return html(pages.error_page(status, message, session.principal, session.csrf), status)

    return checked


async def index(request: web.Request) -> web.Response:
    return see_other(f"{PREFIX}/jobs")


async def login_form(request: web.Request) -> web.Response:
    if session_of(request) is not None:
        return see_other(f"{PREFIX}/jobs")
    return html(pages.login_page())


async def login(request: web.Request) -> web.Response:
    """A form with an API token: a known one opens a session (its cookie), an unknown one is refused (401)."""
    if cross_site(request) or from_script(request):
        return html(pages.login_page("a login from another site's page or a script is refused"), 403)
    token = str((await request.post()).get("token", "")).strip()
    principal = request.app[COORDINATOR].accounts.authenticate(token) if token else None
    if principal is None:
        return html(pages.login_page("unknown API token"), 401)
    sessions = request.app[SESSIONS]
    answer = see_other(f"{PREFIX}/jobs")
    set_cookie(answer, sessions.open(principal), sessions.ttl_s)
    return answer


@logged_in
async def logout(request: web.Request, session: Session) -> web.Response:
    request.app[SESSIONS].close(request.cookies.get(COOKIE, ""))
    answer = see_other(f"{PREFIX}/login")
    clear_cookie(answer)
    return answer


@logged_in
async def jobs(request: web.Request, session: Session) -> web.Response:
    """`?state=`: "" the jobs still to finish, `all`, or one state; `?project=` (admins): one project's."""
    coord = request.app[COORDINATOR]
    state = request.query.get("state", "")
    if state not in pages.STATE_CHOICES:
        raise HTTPError(400, f"state: expected one of {', '.join(pages.STATE_CHOICES[1:])}; got {state!r}")
    scope, project, projects = project_scope(request), "", None
    if scope is None:  # an admin: every project, or the one chosen
        projects = coord.accounts.projects()
        project = request.query.get("project", "")
        if project and project not in projects:
            raise HTTPError(404, f"project: no project {project!r}")
        scope = project or None
    views = coord.job_views(state != "", scope)
    if state not in ("", "all"):
        views = [v for v in views if v.status == state]
    body = pages.jobs_page(views, state, project, projects, session.principal, session.csrf)
    return html(body)


@logged_in
async def job(request: web.Request, session: Session) -> web.Response:
    coord = request.app[COORDINATOR]
    target = coord.find_any(request.match_info["ref"], project_scope(request))
    view = coord.view(target)
    log_offset = None  # an array or a schedule: no log of its own
    if isinstance(target, JobRow):
        size = coord.logs.size(view.allocation_id) if view.allocation_id else 0
        log_offset = max(0, size - LOG_TAIL_BYTES)
    return html(pages.job_page(view, log_offset, session.principal, session.csrf))


@logged_in
async def stop_job(request: web.Request, session: Session) -> web.Response:
    coord = request.app[COORDINATOR]
    view = stop_target(coord, coord.find_any(request.match_info["ref"], project_scope(request)))
    return see_other(f"{PREFIX}/jobs/{view.id}")


@logged_in
async def hosts(request: web.Request, session: Session) -> web.Response:
    """Every host, for every user, as `gpuctl hosts` shows them."""
    coord = request.app[COORDINATOR]
    busy: dict[str, set[int]] = {}
    for alloc in coord.store.active_allocations():
        busy.setdefault(alloc.host_id, set()).update(alloc.blocks)
    return html(pages.hosts_page(coord.host_views(), busy, session.principal, session.csrf))


@logged_in
async def drain_host(request: web.Request, session: Session) -> web.Response:
    """No new work on the host; what runs there finishes (the API's `?stop=1` is not offered here)."""
    require_admin(request)
    coord = request.app[COORDINATOR]
    coord.drain(coord.find_host(request.match_info["ref"]))
    return see_other(f"{PREFIX}/hosts")


@logged_in
async def queue(request: web.Request, session: Session) -> web.Response:
    entries = request.app[COORDINATOR].queue_entries(project_scope(request))
    return html(pages.queue_page(entries, session.principal, session.csrf))


def asset_handler(name: str, content_type: str) -> Handler:
    """One static file of the package, read once: the console's script and style."""
    data = (resources.files("coordinator") / "console_static" / name).read_bytes()

    async def asset(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return web.Response(body=data, content_type=content_type, headers=headers)

    return asset


def add_routes(app: web.Application) -> None:
    app[SESSIONS] = Sessions()
    router = app.router
    router.add_get(PREFIX, index)
    router.add_get(f"{PREFIX}/", index)
    router.add_get(f"{PREFIX}/login", login_form)
    router.add_post(f"{PREFIX}/login", login)
    router.add_post(f"{PREFIX}/logout", logout)
    router.add_get(f"{PREFIX}/jobs", jobs)
    router.add_get(f"{PREFIX}/jobs/{{ref}}", job)
    router.add_post(f"{PREFIX}/jobs/{{ref}}/stop", stop_job)
    router.add_get(f"{PREFIX}/hosts", hosts)
    router.add_post(f"{PREFIX}/hosts/{{ref}}/drain", drain_host)
    router.add_get(f"{PREFIX}/queue", queue)
    for name, content_type in ASSETS.items():
        router.add_get(f"{PREFIX}/static/{name}", asset_handler(name, content_type))
