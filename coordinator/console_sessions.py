"""The web console's logins: a session per login with a token, held in memory, named by a cookie.

The cookie holds a random session id, never the API token: it is HttpOnly (no script reads it), Secure (TLS
only) and SameSite=Strict (no other site's page sends it, so no other site can post a form with it); each
session also has a CSRF token that the console's forms carry, checked on every POST. A session lasts
`SESSION_TTL_S` from its login; a coordinator restart ends them all (liveness lives in memory: logging in again
is the cost). The number of sessions is bounded, a user's and all: past it, the oldest ends.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from coordinator.accounts import Principal
from shared import constants as C

COOKIE = "gpuctl_session"
CSRF_HEADER = "X-Gpuctl-Csrf"  # the console's script sends its session's CSRF token in it (console.js)
SCRIPT_READS = re.compile(rf"^{re.escape(C.API_PREFIX)}/jobs/[^/]+/(logs|metrics)$")
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_USER = 100  # browsers a user may be logged in from at once


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str  # what the console's forms carry back
    expires_at: float


class Sessions:
    """Open sessions by id. Safe on the event loop (no await inside)."""

    def __init__(
        self, ttl_s: float = SESSION_TTL_S, limit: int = MAX_SESSIONS, per_user: int = MAX_SESSIONS_PER_USER
    ) -> None:
        self.ttl_s, self.limit, self.per_user = ttl_s, limit, per_user
        self._open: dict[str, Session] = {}  # insertion order: the oldest first

    def open(self, principal: Principal, now: float | None = None) -> str:
        """A new session for a caller whose token was checked; answers its id (the cookie's value). Past
        `per_user`, the caller's own oldest session ends, so that one user logging in again and again never
        ends another's; past `limit`, the oldest of all."""
        own = [sid for sid, session in self._open.items() if session.principal.name == principal.name]
        for session_id in own[: max(0, len(own) - self.per_user + 1)]:
            del self._open[session_id]
        while len(self._open) >= self.limit:
            self._open.pop(next(iter(self._open)))
        session_id = secrets.token_urlsafe(32)
        expires_at = (now or time.time()) + self.ttl_s
        self._open[session_id] = Session(principal, secrets.token_urlsafe(32), expires_at)
        return session_id

    def get(self, session_id: str, now: float | None = None) -> Session | None:
        session = self._open.get(session_id)
        if session is not None and session.expires_at <= (now or time.time()):
            del self._open[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        """End a session. Idempotent."""
        self._open.pop(session_id, None)


SESSIONS: web.AppKey[Sessions] = web.AppKey("console_sessions", Sessions)


def session_of(request: web.Request) -> Session | None:
    """The console session whose cookie the request carries; None for none, an unknown or an ended one."""
    sessions = request.app.get(SESSIONS)
    session_id = request.cookies.get(COOKIE, "")
    return sessions.get(session_id) if sessions is not None and session_id else None


def console_reader(request: web.Request) -> Principal | None:
    """Who a console page's script is, reading a job's log or readings from the user API with the session's
    cookie: GET only, those two routes only (no token in the page), only without an Authorization header, and
    only with the session's CSRF token in `CSRF_HEADER`, which the console's pages alone hold: a service's
    page, served on the console's origin, sends the cookie too."""
    if request.method != "GET" or "Authorization" in request.headers or not SCRIPT_READS.match(request.path):
        return None
    session = session_of(request)
    if session is None or not csrf_ok(session, request.headers.get(CSRF_HEADER, "")):
        return None
    return session.principal


def csrf_ok(session: Session, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), sent.encode())


def set_cookie(response: web.StreamResponse, session_id: str, ttl_s: float) -> None:
    # Path=/: the console's script reads the user API (GET only) with it: logs, readings
    response.set_cookie(
        COOKIE, session_id, max_age=int(ttl_s), path="/", secure=True, httponly=True, samesite="Strict"
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
