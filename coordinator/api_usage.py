"""`GET /api/v1/usage`: job accounting (coordinator/usage_report.py). A member sees its own project's jobs (asking
for another project is refused), an admin every project's. Query: `since` (a duration back from now, `7d` if
absent), `project`, `user`, `jobs=1` (list each job too)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from coordinator.http import COORDINATOR, PRINCIPAL, HTTPError, json_response
from coordinator.usage_report import usage_report
from shared import constants as C
from shared.units import positive_duration_s

DEFAULT_SINCE = "7d"


async def usage(request: web.Request) -> web.Response:
    since_s = _since_s(request.query.get("since", DEFAULT_SINCE))
    project = _project(request, request.query.get("project", ""))
    user = request.query.get("user", "") or None
    now = time.time()
    store = request.app[COORDINATOR].store
    list_jobs = request.query.get("jobs", "") in ("1", "true")
    report = await asyncio.to_thread(usage_report, store, now - since_s, now, project, user, list_jobs)
    return json_response(report)


def _since_s(raw: str) -> float:
    try:
        return positive_duration_s(raw)
    except ValueError as exc:
        raise HTTPError(400, f"since: {exc}", "since") from None


def _project(request: web.Request, asked: str) -> str | None:
    """The project to report on: a member's own (asking for another is refused); an admin's choice, None
    for all (a project that does not exist is refused: a mistyped name is not a project where nothing ran)."""
    principal = request[PRINCIPAL]
    if principal.admin:
        if asked and asked not in request.app[COORDINATOR].accounts.projects():
            raise HTTPError(404, f"project: no project {asked!r}", "project")
        return asked or None
    own = principal.project or "default"
    if asked and asked != own:
        raise HTTPError(403, f"project: a member sees its own project's usage ({own!r}) only", "project")
    return own


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{C.API_PREFIX}/usage", usage)
