"""The user API for project secrets: names and times for anyone of the project, values only ever in."""

from __future__ import annotations

from aiohttp import web

from coordinator.http import COORDINATOR, PRINCIPAL, HTTPError, body, json_response
from coordinator.secrets import NoSecret, check_name
from shared import constants as C
from shared.wire import SecretSet


def _project(request: web.Request, asked: str) -> str:
    """The project a call acts on: a member's own (asking for another is refused), an admin's choice."""
    principal = request[PRINCIPAL]
    if principal.admin:
        project = asked or "default"
        if project not in request.app[COORDINATOR].accounts.projects():
            raise HTTPError(404, f"project: no project {project[:64]!r}", "project")
        return project
    own = principal.project or "default"
    if asked and asked != own:
        raise HTTPError(403, f"project: a member acts on its own project ({own!r}) only", "project")
    return own


async def list_secrets(request: web.Request) -> web.Response:
    project = _project(request, request.query.get("project", ""))
    return json_response(request.app[COORDINATOR].secrets.list(project))


async def set_secret(request: web.Request) -> web.Response:
    req = await body(request, SecretSet)
    assert isinstance(req, SecretSet)
    project = _project(request, req.project)
    return json_response(request.app[COORDINATOR].secrets.set(project, request.match_info["name"], req.value))


async def delete_secret(request: web.Request) -> web.Response:
    project = _project(request, request.query.get("project", ""))
    name = check_name(request.match_info["name"])
    try:
        request.app[COORDINATOR].secrets.delete(project, name)
    except NoSecret as exc:
        raise HTTPError(404, str(exc), "name") from None
    return json_response({"deleted": name})


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{C.API_PREFIX}/secrets", list_secrets)
    app.router.add_put(f"{C.API_PREFIX}/secrets/{{name}}", set_secret)
    app.router.add_delete(f"{C.API_PREFIX}/secrets/{{name}}", delete_secret)
