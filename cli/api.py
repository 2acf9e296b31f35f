"""The CLI's client of the user API: small, synchronous, standard library HTTP over TLS with a bearer token.

One client keeps its connections alive between requests, so the calls of one CLI run (submit, then its log)
share one TLS handshake.

With several coordinators configured (replicas on one PostgreSQL), a request that cannot reach one goes to the
next, in the configured order: any request whose connection could not be opened, and a request that may be
sent twice (GET, PUT, DELETE) when its connection broke or the coordinator answered 503. A POST whose
connection broke after it was sent is not sent again: it may have been done, and the user decides. Which
coordinator answered is said on stderr only with `gpuctl --debug` (or GPUCTL_DEBUG=1)."""

from __future__ import annotations

import http.client
import json
import os
import select
import ssl
import sys
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from cli.config import CliConfig
from shared.accounting import UsageReport
from shared.constants import API_PREFIX, COORDINATOR_WARNING_HEADER
from shared.spec import TaskSpec
from shared.tls_contexts import client_context
from shared.wire import (
    ArraySubmitRequest,
    AuditEntry,
    FleetLimit,
    FleetSet,
    FleetView,
    HostDetail,
    HostReadings,
    HostView,
    JobMetricsView,
    JobView,
    ProjectCreate,
    ProjectQuota,
    QueueEntry,
    SecretSet,
    SecretView,
    SshHost,
    SubmitRequest,
    TokenCreate,
    TokenCreated,
    UserCreate,
    UserCreated,
)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0  # a coordinator that does not accept a connection in this long is tried no longer
SAFE_TO_REPEAT = frozenset({"GET", "PUT", "DELETE"})  # idempotent: a second coordinator may do it again


class ApiError(Exception):
    """An answer the user must see: one line."""


class Unreachable(ApiError):
    """No connection to this coordinator; `sent`: whether the request may have reached it before it broke."""

    def __init__(self, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    next_offset: int
    complete: bool
    status: str
    exit_code: int | None


class Api:
    """Safe to share between threads: each request takes an idle connection or opens one, and gives it back
    when its answer is read whole."""

    def __init__(self, config: CliConfig, timeout_s: float = 60.0) -> None:
        self.config = config
        for url in config.urls:
            if urllib.parse.urlsplit(url).scheme != "https":
                raise ApiError(f"url: the coordinator must be https://, got {url!r}")
        self._current = 0
        self.timeout_s = timeout_s
        self._ssl: ssl.SSLContext = client_context(config.ca_file)
        self._idle: list[http.client.HTTPSConnection] = []
        self.connections_opened = 0  # TLS connections made, for the tests and benches of keep-alive
        weakref.finalize(self, _close_all, self._idle)

    @property
    def url(self) -> str:
        """The coordinator the next request goes to: the one that answered last."""
        return self.config.urls[self._current]

    def _connection(self) -> http.client.HTTPSConnection:
        """An idle connection whose server has not closed it (a readable idle socket is an EOF, or bytes
        nobody asked for: either way it is closed), else a new one, connected here so that a coordinator
        that does not answer costs CONNECT_TIMEOUT_S, not a whole request's timeout. Raises Unreachable
        (not sent)."""
        try:
            conn = self._idle.pop()
        except IndexError:
            parsed = urllib.parse.urlsplit(self.url)
            conn = http.client.HTTPSConnection(
                parsed.hostname or "localhost", parsed.port or 443, context=self._ssl, timeout=self.timeout_s
            )
        if conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
            conn.close()
        if conn.sock is None:
            conn.timeout = min(CONNECT_TIMEOUT_S, self.timeout_s)
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise Unreachable(f"cannot reach the coordinator at {self.url}: {exc}", sent=False) from None
            finally:
                conn.timeout = self.timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout_s)
            self.connections_opened += 1
        return conn

    def _request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, str], bytes]:
        """The answer of the first coordinator that gives one, from the current one on (module docstring)."""
        failures: list[str] = []
        for attempt in range(len(self.config.urls)):
            if attempt:
                self._move_on()
                say_debug(f"{failures[-1]}; trying {self.url}")
            last, url = attempt == len(self.config.urls) - 1, self.url
            try:
                answer = self._request_at(method, path, body, content_type)
            except Unreachable as exc:
                if (exc.sent and method not in SAFE_TO_REPEAT) or last:
                    raise Unreachable("; ".join([*failures, str(exc)]), exc.sent) from None
                failures.append(str(exc))
                continue
            if answer[0] == 503 and method in SAFE_TO_REPEAT and not last:
                failures.append(f"the coordinator at {url} answered 503")
                continue
            say_debug(f"{url} answered {method} {path.partition('?')[0]} ({answer[0]})")
            return answer
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _request_at(
        self, method: str, path: str, body: bytes | None, content_type: str
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self._connection()
        headers = {"Authorization": f"Bearer {self.config.token}", "Content-Type": content_type}
        try:
            conn.request(method, API_PREFIX + path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException as exc:
            conn.close()  # half a request or answer on it (Ctrl-C in a long poll too): it carries no other
            if isinstance(exc, OSError | http.client.HTTPException):
                raise Unreachable(f"cannot reach the coordinator at {self.url}: {exc}") from None
            raise
        self._idle.append(conn)  # if the server said `Connection: close`, http.client has closed it already
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def _move_on(self) -> None:
        """The next coordinator; the idle connections were to the one left."""
        _close_all(self._idle)
        self._idle.clear()
        self._current = (self._current + 1) % len(self.config.urls)

    def _call(self, method: str, path: str, type_: type[T], body: object = None) -> T:
        status, _, data = self._request(method, path, None if body is None else msgspec.json.encode(body))
        _raise_for(status, data)
        return msgspec.json.decode(data, type=type_)

    def submit(self, spec: TaskSpec) -> JobView:
        return self._call("POST", "/jobs", JobView, SubmitRequest(spec=spec))

    def submit_array(self, spec: TaskSpec, array: str) -> JobView:
        """One job per index of `array` (Slurm's syntax), in one request; answers the array folded."""
        return self._call("POST", "/arrays", JobView, ArraySubmitRequest(spec=spec, array=array))

    def upload_files(self, archive: bytes) -> str:
        """Store a files archive on the coordinator; answers its id (idempotent: the sha256 of the bytes)."""
        status, _, data = self._request("POST", "/files", archive, "application/gzip")
        _raise_for(status, data)
        return msgspec.json.decode(data, type=dict[str, str])["id"]

    def jobs(self, include_finished: bool) -> list[JobView]:
        return self._call("GET", "/jobs" + ("?all=1" if include_finished else ""), list[JobView])

    def job(self, ref: str) -> JobView:
        return self._call("GET", f"/jobs/{urllib.parse.quote(ref, safe='')}", JobView)

    def tasks(self, ref: str, include_finished: bool) -> list[JobView]:
        """An array's tasks (those still to finish, unless `include_finished`)."""
        query = "?all=1" if include_finished else ""
        return self._call("GET", f"/jobs/{urllib.parse.quote(ref, safe='')}/tasks{query}", list[JobView])

    def stop(self, ref: str) -> JobView:
        return self._call("POST", f"/jobs/{urllib.parse.quote(ref, safe='')}/stop", JobView)

    def job_metrics(self, ref: str) -> JobMetricsView:
        """The live readings of the GPUs the job holds (`gpuctl metrics`)."""
        return self._call("GET", f"/jobs/{urllib.parse.quote(ref, safe='')}/metrics", JobMetricsView)

    def fleet_readings(self) -> list[HostReadings]:
        """Every host's latest readings, summed up (`gpuctl top`)."""
        return self._call("GET", "/readings", list[HostReadings])

    def hosts(self) -> list[HostView]:
        return self.hosts_and_warning()[0]

    def hosts_and_warning(self) -> tuple[list[HostView], str]:
        """The hosts, and the coordinator's own warning ("" if none): its disk under its floor, say."""
        status, headers, data = self._request("GET", "/hosts")
        _raise_for(status, data)
        warning = headers.get(COORDINATOR_WARNING_HEADER.lower(), "")
        return msgspec.json.decode(data, type=list[HostView]), warning

    def remove_host(self, ref: str, force: bool = False) -> dict[str, str]:
        query = "?force=1" if force else ""
        return self._call("POST", f"/hosts/{urllib.parse.quote(ref, safe='')}/remove{query}", dict[str, str])

    def drain_host(self, ref: str, stop: bool = False) -> dict[str, str]:
        query = "?stop=1" if stop else ""
        return self._call("POST", f"/hosts/{urllib.parse.quote(ref, safe='')}/drain{query}", dict[str, str])

    def undrain_host(self, ref: str) -> dict[str, str]:
        return self._call("POST", f"/hosts/{urllib.parse.quote(ref, safe='')}/undrain", dict[str, str])

    def create_token(self, request: TokenCreate) -> TokenCreated:
        return self._call("POST", "/tokens", TokenCreated, request)

    def tokens(self) -> list[dict[str, object]]:
        return self._call("GET", "/tokens", list[dict[str, object]])

    def delete_token(self, token_id: str) -> None:
        self._call("DELETE", f"/tokens/{urllib.parse.quote(token_id, safe='')}", dict[str, bool])

    def create_project(self, name: str) -> None:
        self._call("POST", "/projects", dict[str, str], ProjectCreate(name=name))

    def set_quota(self, request: ProjectQuota) -> None:
        self._call("POST", "/projects/quota", ProjectQuota, request)

    def queue(self) -> list[QueueEntry]:
        return self._call("GET", "/queue", list[QueueEntry])

    def create_user(self, request: UserCreate) -> UserCreated:
        return self._call("POST", "/users", UserCreated, request)

    def limit_fleet(self, request: FleetLimit) -> None:
        self._call("POST", "/fleets", FleetLimit, request)

    def set_fleet(self, request: FleetSet) -> FleetView:
        return self._call("POST", "/fleets/settings", FleetView, request)

    def fleets(self) -> list[FleetView]:
        return self._call("GET", "/fleets", list[FleetView])

    def set_secret(self, name: str, value: str, project: str = "") -> SecretView:
        path = f"/secrets/{urllib.parse.quote(name, safe='')}"
        return self._call("PUT", path, SecretView, SecretSet(value=value, project=project))

    def secrets(self, project: str = "") -> list[SecretView]:
        query = "?" + urllib.parse.urlencode({"project": project}) if project else ""
        return self._call("GET", f"/secrets{query}", list[SecretView])

    def delete_secret(self, name: str, project: str = "") -> None:
        query = "?" + urllib.parse.urlencode({"project": project}) if project else ""
        self._call("DELETE", f"/secrets/{urllib.parse.quote(name, safe='')}{query}", dict[str, str])

    def audit(self, job: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """The latest entries of the audit log (of one job), newest first; admins only."""
        query = urllib.parse.urlencode({"limit": limit, **({"job": job} if job else {})})
        return self._call("GET", f"/audit?{query}", list[AuditEntry])

    def usage(self, since: str, project: str = "", user: str = "", jobs: bool = False) -> UsageReport:
        """What the jobs that finished since `since` ago used (of `project`, of `user`), summed per project
        and user; with `jobs`, each job too."""
        asked = {"since": since, "project": project, "user": user, "jobs": "1" if jobs else ""}
        query = urllib.parse.urlencode({k: v for k, v in asked.items() if v})
        return self._call("GET", f"/usage?{query}", UsageReport)

    def ssh_host(self, ref: str) -> SshHost:
        """Whom `gpuctl ssh` logs in to a running dev environment as, and its sshd's host key."""
        return self._call("GET", f"/jobs/{urllib.parse.quote(ref, safe='')}/ssh-host", SshHost)

    def host_detail(self, ref: str) -> HostDetail:
        return self._call("GET", f"/hosts/{urllib.parse.quote(ref, safe='')}", HostDetail)

    def logs(
        self, ref: str, offset: int, follow: bool, attempt: int | None = None, node: int = 0
    ) -> LogChunk:
        """A chunk of the log of the job's attempt number `attempt` (None: its latest), of its node `node`."""
        query = urllib.parse.urlencode(
            {"offset": offset, "follow": "1" if follow else "0", "attempt": attempt or 0, "node": node}
        )
        status, headers, data = self._request("GET", f"/jobs/{urllib.parse.quote(ref, safe='')}/logs?{query}")
        _raise_for(status, data)
        exit_code = headers.get("x-exit-code", "")
        return LogChunk(
            data=data,
            next_offset=int(headers.get("x-next-offset", offset + len(data))),
            complete=headers.get("x-complete") == "1",
            status=headers.get("x-job-status", ""),
            exit_code=int(exit_code)
            if exit_code.lstrip("-").isascii() and exit_code.lstrip("-").isdigit()
            else None,
        )


def say_debug(line: str) -> None:
    """A line on stderr for `gpuctl --debug` (GPUCTL_DEBUG set): which coordinator answered, which failed."""
    if os.environ.get("GPUCTL_DEBUG"):
        print(f"gpuctl: {line}", file=sys.stderr)


def _close_all(connections: list[http.client.HTTPSConnection]) -> None:
    for conn in connections:
        conn.close()


def _raise_for(status: int, data: bytes) -> None:
    if status < 400:
        return
    try:
        message = json.loads(data).get("error", "")
    except (ValueError, AttributeError):
        message = data[:200].decode(errors="replace")
    raise ApiError(message or f"the coordinator answered {status}")
