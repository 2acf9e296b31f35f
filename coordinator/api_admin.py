"""The admin API: join tokens, projects (their quotas), users, fleets (their settings). Every route needs an
admin token, but the list of fleets."""

from __future__ import annotations

from aiohttp import web

from coordinator.http import COORDINATOR, HTTPError, body, json_response, require_admin
from shared import constants as C
from shared import tls
from shared.join import JoinString
from shared.wire import (
    FleetLimit,
    FleetSet,
    ProjectCreate,
    ProjectQuota,
    TokenCreate,
    TokenCreated,
    UserCreate,
    UserCreated,
)


async def create_token(request: web.Request) -> web.Response:
    require_admin(request)
    req = await body(request, TokenCreate)
    assert isinstance(req, TokenCreate)
    coord = request.app[COORDINATOR]
    token_id, secret, expires_at = coord.accounts.create_join_token(
        req.fleet, req.ttl_s, req.uses, req.labels
    )
    join = JoinString(token_id, secret, tls.ca_pin(coord.ca.cert_pem), coord.settings.advertise_urls)
    return json_response(TokenCreated(id=token_id, join_string=str(join), expires_at=expires_at), 201)


async def list_tokens(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(request.app[COORDINATOR].accounts.join_tokens())


async def delete_token(request: web.Request) -> web.Response:
    require_admin(request)
    token_id = request.match_info["id"]
    if not request.app[COORDINATOR].accounts.delete_join_token(token_id):
        raise HTTPError(404, f"no join token {token_id[:64]!r}", "id")
    return json_response({"deleted": True})


async def create_project(request: web.Request) -> web.Response:
    require_admin(request)
    req = await body(request, ProjectCreate)
    assert isinstance(req, ProjectCreate)
    request.app[COORDINATOR].accounts.create_project(req.name)
    return json_response({"name": req.name}, 201)


async def set_quota(request: web.Request) -> web.Response:
    require_admin(request)
    req = await body(request, ProjectQuota)
    assert isinstance(req, ProjectQuota)
    coord = request.app[COORDINATOR]
    coord.accounts.set_quota(req.name, req.gpus, req.jobs)
    coord.kick()  # the quota is committed: held jobs may start, or the project's next ones wait
    return json_response(req)


async def create_user(request: web.Request) -> web.Response:
    require_admin(request)
    req = await body(request, UserCreate)
    assert isinstance(req, UserCreate)
    token = request.app[COORDINATOR].accounts.create_user(req.name, req.project, req.role)
    return json_response(UserCreated(name=req.name, project=req.project, role=req.role, token=token), 201)


async def limit_fleet(request: web.Request) -> web.Response:
    require_admin(request)
    req = await body(request, FleetLimit)
    assert isinstance(req, FleetLimit)
    coord = request.app[COORDINATOR]
    coord.accounts.set_fleet_projects(req.name, req.projects)
    coord.kick()  # the limit is committed: a failed pass is the housekeeping loop's to retry
    return json_response(req)


async def set_fleet(request: web.Request) -> web.Response:
    require_admin(request)
    req = await body(request, FleetSet)
    assert isinstance(req, FleetSet)
    coord = request.app[COORDINATOR]
    coord.accounts.set_fleet(req.name, req.placement, req.preemption)
    coord.kick()  # the settings are committed: multi-node jobs and preemption follow them now
    return json_response(next(v for v in coord.accounts.fleet_views() if v.name == req.name))


async def list_fleets(request: web.Request) -> web.Response:
    return json_response(request.app[COORDINATOR].accounts.fleet_views())


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{C.API_PREFIX}/tokens", create_token)
    app.router.add_get(f"{C.API_PREFIX}/tokens", list_tokens)
    app.router.add_delete(f"{C.API_PREFIX}/tokens/{{id}}", delete_token)
    app.router.add_post(f"{C.API_PREFIX}/projects", create_project)
    app.router.add_post(f"{C.API_PREFIX}/projects/quota", set_quota)
    app.router.add_post(f"{C.API_PREFIX}/users", create_user)
    app.router.add_post(f"{C.API_PREFIX}/fleets", limit_fleet)
    app.router.add_post(f"{C.API_PREFIX}/fleets/settings", set_fleet)
    app.router.add_get(f"{C.API_PREFIX}/fleets", list_fleets)
