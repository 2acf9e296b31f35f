"""Hostile input: hypothesis drives every HTTP route of a real coordinator (real TLS) with random and
mutated requests. No answer may be a 5xx, and the coordinator must keep answering. Over 10,000 inputs."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.pki import issue_agent_cert
from coordinator.server import ServerConfig, ensure_admin_token, start_coordinator
from shared import tls
from tests.harness import FAST, reachable_tmpdir

EXAMPLES_PER_GROUP = 2600  # four groups: over 10,000 inputs in all
pytestmark = pytest.mark.timeout(360)  # thousands of TLS requests: minutes on a loaded 2-core machine

VALID_SUBMIT = {"spec": {"commands": ["echo hi"], "resources": {"gpu": {"count": {"min": 1, "max": 1}}}}}
VALID_SYNC = {"agent_version": "0.1.0", "inventory_generation": "x", "allocations": [], "desired_index": 0}
VALID_BODIES: dict[str, Any] = {
    "/api/v1/jobs": VALID_SUBMIT,
    "/api/v1/tokens": {"fleet": "dc1", "ttl_s": 60},
    "/api/v1/projects": {"name": "p"},
    "/api/v1/users": {"name": "u", "project": "default"},
    "/api/v1/fleets": {"name": "f", "projects": []},
    "/agent/v1/sync": VALID_SYNC,
    "/agent/v1/enroll": {"token": "a.b", "csr": "x", "hostname": "h"},
    "/agent/v1/renew": {"csr": "x"},
}
ROUTES = [
    ("GET", "/healthz"),
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/{ref}"),
    ("POST", "/api/v1/jobs/{ref}/stop"),
    ("GET", "/api/v1/jobs/{ref}/logs"),
    ("GET", "/api/v1/hosts"),
    ("POST", "/api/v1/hosts/{ref}/remove"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{ref}"),
    ("POST", "/api/v1/projects"),
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/fleets"),
    ("GET", "/agent/v1/ca"),
    ("POST", "/agent/v1/enroll"),
    ("POST", "/agent/v1/renew"),
    ("POST", "/agent/v1/sync"),
    ("POST", "/agent/v1/allocations/{ref}/logs"),
]


@dataclass
class Target:
    port: int
    token: str
    plain: ssl.SSLContext
    agent: ssl.SSLContext
    conns: dict[str, http.client.HTTPSConnection]

    def send(self, method: str, path: str, body: bytes, as_agent: bool, query: str = "") -> int:
        kind = "agent" if as_agent else "user"
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for _ in range(2):  # a connection the server closed is opened again, once
            conn = self.conns.get(kind) or http.client.HTTPSConnection(
                "localhost", self.port, context=self.agent if as_agent else self.plain, timeout=30
            )
            self.conns[kind] = conn
            try:
                conn.request(method, path + (f"?{query}" if query else ""), body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                return resp.status
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                del self.conns[kind]
        raise AssertionError(f"the coordinator stopped answering on {method} {path}")


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    root = reachable_tmpdir()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(
        start_coordinator(ServerConfig(root / "c", "127.0.0.1", 0, ("localhost",), FAST)), loop
    ).result(30)
    token = ensure_admin_token(running.coordinator.store, root / "c" / "admin-token")
    cert, key = issue_agent_cert(running.pki, "fuzz-host", root / "agent")
    agent = tls.client_context(running.pki.ca_cert, cert, key)
    target = Target(running.port, token, tls.client_context(running.pki.ca_cert), agent, {})
    yield target
    for conn in target.conns.values():
        conn.close()
    asyncio.run_coroutine_threadsafe(running.close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    shutil.rmtree(root, ignore_errors=True)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner, max_size=5),
    max_leaves=20,
)
refs = st.text(min_size=1, max_size=40).map(lambda s: urllib.parse.quote(s, safe=""))
routes = st.sampled_from(ROUTES)
queries = st.dictionaries(
    st.sampled_from(["offset", "follow", "all", "max_bytes", "x"]),
    st.text(max_size=12) | st.integers(-(2**65), 2**65).map(str),
    max_size=3,
).map(urllib.parse.urlencode)


def _mutate(value: Any, data: st.DataObject) -> Any:
    """Replace one value somewhere inside a valid body with arbitrary JSON."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: _mutate(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        return [*value[:i], _mutate(value[i], data), *value[i + 1 :]]
    return data.draw(json_values)


def _path(template: str, data: st.DataObject) -> str:
    return template.replace("{ref}", data.draw(refs)) if "{ref}" in template else template


def check(target: Target, method: str, path: str, body: bytes, query: str = "") -> None:
    status = target.send(method, path, body, as_agent=path.startswith("/agent/"), query=query)
    assert status < 500, f"{method} {path}?{query} answered {status} for {body[:200]!r}"


FUZZ = settings(
    max_examples=EXAMPLES_PER_GROUP,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(route=routes, body=st.binary(max_size=300), data=st.data())
def test_random_bytes_on_every_route(
    target: Target, route: tuple[str, str], body: bytes, data: st.DataObject
) -> None:
    method, template = route
    check(target, method, _path(template, data), body)


@FUZZ
@given(route=routes, value=json_values, query=queries, data=st.data())
def test_random_json_and_queries_on_every_route(
    target: Target, route: tuple[str, str], value: Any, query: str, data: st.DataObject
) -> None:
    method, template = route
    check(target, method, _path(template, data), json.dumps(value).encode(), query)


@FUZZ
@given(path=st.sampled_from(sorted(VALID_BODIES)), data=st.data())
def test_mutated_valid_bodies(target: Target, path: str, data: st.DataObject) -> None:
    check(target, "POST", path, json.dumps(_mutate(VALID_BODIES[path], data)).encode())


@FUZZ
@given(
    spec=st.dictionaries(
        st.sampled_from(
            [
                "commands",
                "resources",
                "env",
                "priority",
                "name",
                "image",
                "max_duration_s",
                "nodes",
                "fleets",
                "volumes",
                "bogus",
            ]
        ),
        json_values,
        max_size=6,
    )
)
def test_random_specs_are_refused_or_accepted_never_a_5xx(target: Target, spec: dict[str, Any]) -> None:
    check(target, "POST", "/api/v1/jobs", json.dumps({"spec": spec}).encode())


def test_the_coordinator_still_answers_after_the_fuzzing(target: Target) -> None:
    assert target.send("GET", "/healthz", b"", as_agent=False) == 200
