"""Hostile input on every route of a real coordinator (real TLS; agent routes with a real enrolled client
certificate). A seeded generator takes each route's valid request and mutates it: huge and negative integers,
wrong types, deep nesting, long and odd unicode strings, missing and extra fields, bad query parameters and
path references, random bytes. No answer may be a 5xx; every error answer is the API's JSON error shape.

Seeded, so a failure repeats: the message names the request. FUZZ_SEED and FUZZ_REQUESTS override."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from coordinator.service import Settings
from shared import tls
from shared.wire import TokenCreate
from tests.agent_session import agent_session, sync_body
from tests.harness import Cluster, cluster
from tests.test_inventory_guard import SOUND

SEED = int(os.environ.get("FUZZ_SEED", "20240611"))
REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "10400"))
CONCURRENCY = 12
NO_WAIT = Settings(poll_timeout_s=0.001, sync_interval_s=0.05, unreachable_after_s=30.0)  # syncs never hold

HUGE_INTS = [2**63, 2**63 - 1, 2**64, -(2**63) - 1, -(2**63), 2**44, 2**40 + 1, 2**31, 10**30, -1, 0]
ODD_VALUES: list[Any] = [
    *HUGE_INTS,
    1e308,
    -1e308,
    0.5,
    -0.0,
    True,
    False,
    None,
    "",
    "x" * 70_000,
    "\u0000\u202e\ufeff",
    "🙂" * 500,
    "\ud800",
    "../../etc/passwd",
    [],
    {},
    [1, "a", None],
    {"": {"": [None]}},
]
DEEP = "__DEEP__"  # replaced by 3,000 nested arrays once encoded (Python's json cannot nest that deep)


@dataclass
class Route:
    method: str
    path: str  # "{ref}" is filled in
    auth: str  # "user" | "agent" | "none"
    valid: Callable[[dict[str, str]], Any] | None = None  # the valid JSON body, given known refs
    queries: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()  # which known refs fit the path


def _sync(refs: dict[str, str]) -> Any:
    body = json.loads(sync_body(SOUND))
    status = {"id": refs["alloc"], "state": "running", "exit_code": None, "log_size": 10, "reason": "ok"}
    return {**body, "allocations": [status], "desired_index": 1}


ROUTES = [
    Route("GET", "/healthz", "none"),
    Route("POST", "/api/v1/jobs", "user", lambda r: {"spec": {"commands": ["echo hi"], "priority": 3}}),
    Route("POST", "/api/v1/files", "user", lambda r: "not an archive"),
    Route("GET", "/api/v1/jobs", "user", queries=("all",)),
    Route("GET", "/api/v1/jobs/{ref}", "user", refs=("job",)),
    Route("POST", "/api/v1/jobs/{ref}/stop", "user", refs=("job",)),
    Route("GET", "/api/v1/jobs/{ref}/logs", "user", queries=("offset", "max_bytes"), refs=("job",)),
    Route("GET", "/api/v1/hosts", "user"),
    Route("GET", "/api/v1/hosts/{ref}", "user", refs=("host",)),
    Route("POST", "/api/v1/hosts/{ref}/remove", "user"),  # never the fuzzing agent's own host
    Route("POST", "/api/v1/tokens", "user", lambda r: {"fleet": "dc1", "ttl_s": 60, "uses": 2}),
    Route("GET", "/api/v1/tokens", "user"),
    Route("DELETE", "/api/v1/tokens/{ref}", "user", refs=("token",)),
    Route("POST", "/api/v1/projects", "user", lambda r: {"name": "p"}),
    Route("POST", "/api/v1/projects/quota", "user", lambda r: {"name": "default", "gpus": 8, "jobs": 100}),
    Route("GET", "/api/v1/queue", "user"),
    Route("POST", "/api/v1/users", "user", lambda r: {"name": "u", "project": "default", "role": "member"}),
    Route("POST", "/api/v1/fleets", "user", lambda r: {"name": "dc1", "projects": ["default"]}),
    Route(
        "POST",
        "/api/v1/fleets/settings",
        "user",
        lambda r: {"name": "dc1", "placement": "cluster", "preemption": True},
    ),
    Route("GET", "/api/v1/fleets", "user"),
    Route(
        "PUT", "/api/v1/secrets/{ref}", "user", lambda r: {"value": "s3cr3t", "project": ""}, refs=("secret",)
    ),
    Route("GET", "/api/v1/secrets", "user", queries=("project",)),
    Route("DELETE", "/api/v1/secrets/{ref}", "user", queries=("project",), refs=("secret",)),
    Route("GET", "/agent/v1/ca", "none"),
    Route("POST", "/agent/v1/enroll", "none", lambda r: {"token": r["join"], "csr": "x", "hostname": "h"}),
    Route("POST", "/agent/v1/renew", "agent", lambda r: {"csr": "-----BEGIN CERTIFICATE REQUEST-----"}),
    Route("POST", "/agent/v1/sync", "agent", _sync),
    Route("POST", "/agent/v1/allocations/{ref}/logs", "agent", queries=("offset",), refs=("alloc",)),
    Route("GET", "/agent/v1/files/{ref}", "agent"),
]


@dataclass
class Request:
    method: str
    path: str
    auth: str
    body: bytes = b""
    query: str = ""

    def __str__(self) -> str:
        return f"{self.method} {self.path}?{self.query} as {self.auth} with {self.body[:300]!r}"


@dataclass
class Fuzzer:
    """Requests from one seed. Pure: the same seed and refs give the same requests."""

    rng: random.Random
    refs: dict[str, str]

    def request(self) -> Request:
        route = self.rng.choice(ROUTES)
        auth = route.auth if self.rng.random() > 0.05 else self.rng.choice(["user", "agent", "none"])
        path = route.path.replace("{ref}", self._ref(route))
        return Request(route.method, path, auth, self._body(route), self._query(route))

    def _ref(self, route: Route) -> str:
        if route.refs and self.rng.random() < 0.6:
            return self.refs[self.rng.choice(route.refs)]
        return urllib.parse.quote(self._text(), safe="") or "x"

    def _body(self, route: Route) -> bytes:
        roll = self.rng.random()
        if roll < 0.08:
            return self.rng.randbytes(self.rng.randrange(0, 300))
        if roll < 0.18 or route.valid is None:
            return _encode(self._value(depth=0))
        valid = route.valid(self.refs)
        if roll < 0.25:
            return _encode(valid)
        for _ in range(self.rng.randint(1, 3)):
            valid = self._mutate(valid)
        return _encode(valid)

    def _mutate(self, value: Any) -> Any:
        """One change somewhere inside `value`: a node replaced, a field dropped or added, a list grown."""
        if isinstance(value, dict) and value and self.rng.random() < 0.7:
            key = self.rng.choice(sorted(value))
            roll = self.rng.random()
            if roll < 0.1:
                return {k: v for k, v in value.items() if k != key}
            if roll < 0.2:
                return {**value, self._text(): self._value(depth=0)}
            return {**value, key: self._mutate(value[key])}
        if isinstance(value, list) and value and self.rng.random() < 0.7:
            i = self.rng.randrange(len(value))
            if self.rng.random() < 0.1:
                return value + value[i:] * self.rng.randint(1, 50)
            return [*value[:i], self._mutate(value[i]), *value[i + 1 :]]
        if isinstance(value, int) and not isinstance(value, bool) and self.rng.random() < 0.5:
            return self.rng.choice(HUGE_INTS)
        return self._value(depth=0)

    def _value(self, depth: int) -> Any:
        roll = self.rng.random()
        if roll < 0.5 or depth > 3:
            return self.rng.choice(ODD_VALUES)
        if roll < 0.55:
            return DEEP
        if roll < 0.65:
            return self._text()
        if roll < 0.8:
            return [self._value(depth + 1) for _ in range(self.rng.randrange(4))]
        return {self._text(): self._value(depth + 1) for _ in range(self.rng.randrange(4))}

    def _text(self) -> str:
        alphabet = "ab-_./%?#\\\u00e9\u4e2d\U0001f642\u0000 \n"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randrange(0, 24)))

    def _query(self, route: Route) -> str:
        names = [*route.queries, "x"] if self.rng.random() < 0.4 else list(route.queries)
        values = [str(v) for v in HUGE_INTS] + ["", "-0", "1e5", "0x10", "²", "abc", "1" * 40, "0", "7"]
        pairs = [(n, self.rng.choice(values)) for n in names if self.rng.random() < 0.7]
        return urllib.parse.urlencode(pairs)


def _encode(value: Any) -> bytes:
    text = json.dumps(value)
    return text.replace(json.dumps(DEEP), "[" * 3000 + "]" * 3000, 1).encode()


@dataclass
class Tally:
    sent: int = 0
    server_errors: list[str] = field(default_factory=list)
    not_json: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


async def _send(sessions: dict[str, aiohttp.ClientSession], token: str, req: Request, tally: Tally) -> None:
    headers = {"Content-Type": "application/json"}
    if req.auth == "user":
        headers["Authorization"] = f"Bearer {token}"
    url = req.path + (f"?{req.query}" if req.query else "")
    session = sessions["agent" if req.auth == "agent" else "user"]
    async with session.request(req.method, url, data=io.BytesIO(req.body), headers=headers) as resp:
        data = await resp.read()
    tally.sent += 1
    tally.statuses[resp.status] = tally.statuses.get(resp.status, 0) + 1
    if resp.status >= 500:
        tally.server_errors.append(f"{resp.status} for {req}")
    elif resp.status >= 400 and not _is_error_shape(data):
        tally.not_json.append(f"{resp.status} {data[:100]!r} for {req}")


def _is_error_shape(data: bytes) -> bool:
    try:
        answer = json.loads(data)
    except ValueError:
        return False
    return isinstance(answer, dict) and isinstance(answer.get("error"), str)


async def _known_refs(c: Cluster, agent: aiohttp.ClientSession) -> dict[str, str]:
    """A job placed on the fuzzing agent's host (so its allocation takes logs and status), a join token."""
    async with agent.post("/agent/v1/sync", data=sync_body(SOUND)) as resp:
        assert resp.status == 200, await resp.text()
    job = await c.submit("type: task\ncommands: [sleep 1]\nresources: {gpu: H100:1}\n")
    created = await asyncio.to_thread(c.api.create_token, TokenCreate(fleet="dc1"))
    assert job.allocation_id is not None, job
    return {
        "job": job.id,
        "alloc": job.allocation_id,
        "host": "fuzz-host",
        "token": created.id,
        "join": created.join_string,
        "secret": "HF_TOKEN",
    }


@pytest.mark.timeout(240)
async def test_no_request_gets_a_5xx_and_every_error_is_json() -> None:
    async with cluster(NO_WAIT) as c, agent_session(c.coordinator, "fuzz-host", c.root) as agent:
        refs = await _known_refs(c, agent)
        context = tls.client_context(c.coordinator.pki.ca_cert)
        user = aiohttp.ClientSession(base_url=c.coordinator.url, connector=aiohttp.TCPConnector(ssl=context))
        fuzzer, tally = Fuzzer(random.Random(SEED), refs), Tally()
        started = time.monotonic()
        async with user:
            sessions = {"user": user, "agent": agent}
            queue = [fuzzer.request() for _ in range(REQUESTS)]

            async def worker(mine: list[Request]) -> None:
                for req in mine:
                    await _send(sessions, c.api.config.token, req, tally)

            await asyncio.gather(*(worker(queue[i::CONCURRENCY]) for i in range(CONCURRENCY)))
            async with user.get("/healthz") as resp:
                assert resp.status == 200  # and it still answers
        took = time.monotonic() - started
        print(f"\nfuzz seed {SEED}: 5xx: {len(tally.server_errors)} of {tally.sent} requests in {took:.1f} s")
        print("statuses:", dict(sorted(tally.statuses.items())))
        assert tally.sent == REQUESTS
        assert not tally.server_errors, "\n".join(tally.server_errors[:10])
        assert not tally.not_json, "\n".join(tally.not_json[:10])
