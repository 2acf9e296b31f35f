"""Services (`type: service`) served by the coordinator at /services/PROJECT/NAME/: replicas in turn,
failover, who may call, streaming both ways, and paths that may not pass. A real coordinator and real agents
whose replicas are plain-process jobs running an HTTP server (tests/service_app.py), reached over the
agents' channels; real TLS, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from multidict import CIMultiDict
from yarl import URL

from cli.api import ApiError
from cli.config import save_cli_config
from cli.remote import ExecRequest
from coordinator.console_sessions import COOKIE
from coordinator.limits import UNAUTHENTICATED_CONNECTIONS_PER_ADDRESS
from coordinator.replicas import SERVICE_STREAMS_PER_AGENT
from coordinator.service_http import (
    ResponseHead,
    UpstreamError,
    chunk,
    content_length,
    request_head,
    response_headers,
)
from shared.channel import MAX_STREAMS_PER_AGENT
from shared.spec import TaskSpec, parse_spec
from shared.wire import UserCreate
from tests.harness import Cluster, cluster
from tests.test_channel import (
    _coordinator_streams,
    _exec,
    _free_port,
    _rss_bytes,
    _stalls_on_its_window,
    _until,
)
from tests.test_cli import GPUCTL, ROOT
from tests.test_console import console

pytestmark = pytest.mark.timeout(180)

APP = (Path(__file__).parent / "service_app.py").read_text()


def _service(name: str, port: int, extra: str = "", command: str = 'exec python3 -c "$APP" PORT') -> str:
    command = command.replace("PORT", str(port))
    return f"type: service\nname: {name}\nport: {port}\ncommands: ['{command}']\n{extra}"


def service_spec(yaml_text: str) -> TaskSpec:
    """The service written as `yaml_text`, with its replicas' program in their environment ($APP)."""
    return msgspec.structs.replace(parse_spec(yaml_text), env={"APP": APP})


async def _submit(c: Cluster, yaml_text: str) -> str:
    view = await c.submit_spec(service_spec(yaml_text))
    assert view.service_path
    return view.id


class Caller:
    """HTTPS requests to the coordinator (of a test cluster, or at a URL), through a session that trusts its
    CA, with `token` (None: no Authorization)."""

    def __init__(self, coordinator: Cluster | str, session: aiohttp.ClientSession, token: str | None) -> None:
        self.base = coordinator if isinstance(coordinator, str) else coordinator.coordinator.url
        self.session, self.token = session, token

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return await self.request("GET", path, headers)

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, data: io.BytesIO | None = None
    ) -> tuple[int, bytes]:
        """`path` as written: aiohttp neither normalises nor re-encodes it."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = URL(self.base + path, encoded=True)
        async with self.session.request(method, url, headers=headers, data=data) as response:
            return response.status, await response.read()

    async def until_ok(self, path: str) -> bytes:
        """The first 200 answer: a replica takes requests once its job runs and its port listens."""
        async with asyncio.timeout(60):
            while True:
                status, body = await self.get(path)
                if status == 200:
                    return body
                assert status == 503, (status, body)
                await asyncio.sleep(0.1)


async def stream_passes_chunk_by_chunk(caller: Caller, service: str) -> None:
    """GET `service`/stream, whose replica holds the last chunk until /release: the first chunk must come
    before it (a proxy that held the answer whole would never pass it on)."""
    await caller.until_ok(f"{service}/who")
    headers = {"Authorization": f"Bearer {caller.token}"}
    async with caller.session.get(f"{caller.base}{service}/stream", headers=headers) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        async with asyncio.timeout(30):  # not a speed goal: a proxy that holds the answer never sends it
            first = await response.content.readuntil(b"\n\n")
        assert first == b"data: first\n\n"
        assert await caller.until_ok(f"{service}/release") == b"released"
        assert await response.content.read() == b"data: last\n\n"


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _ssl(c: Cluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(c.api.config.ca_file))


@pytest.fixture
async def two_hosts() -> AsyncIterator[Cluster]:
    """Two hosts whose jobs run as one user: both replicas may listen on the one loopback they share."""
    async with cluster() as c:
        c.start_agent("host-a", "1xH100:80GB", run_as="nobody")
        c.start_agent("host-b", "1xH100:80GB", run_as="nobody")
        yield c


async def test_two_replicas_answer_in_turn_and_one_stopped_leaves_the_other_serving(
    two_hosts: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Which replica a request went to is the coordinator's log line (on one machine, the kernel picks which
    of the two listening processes answers); once replica 0's process is gone, only replica 1 answers."""
    c = two_hosts
    caplog.set_level(logging.DEBUG, logger="gpuctl.coordinator")
    port = _free_port()
    service_id = await _submit(c, _service("chat", port, "replicas: 2\nresources: {gpu: 1}\n"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(c))) as session:
        caller = Caller(c, session, c.api.config.token)
        await c.wait_for(f"{service_id}[0]", "running")
        await c.wait_for(f"{service_id}[1]", "running")
        await caller.until_ok("/services/default/chat/who")
        caplog.clear()
        answers = [await caller.get("/services/default/chat/who") for _ in range(6)]
        assert {status for status, _ in answers} == {200}
        assert _chosen(caplog) in (["chat[0]", "chat[1]"] * 3, ["chat[1]", "chat[0]"] * 3)

        # the prefix is taken off, the token and hop-by-hop headers stay here, the query passes
        status, body = await caller.get(
            "/services/default/chat/echo-request?x=1",
            headers={"Connection": "close, X-Secret", "X-Secret": "s"},
        )
        got = json.loads(body)
        assert (status, got["path"]) == (200, "/echo-request?x=1")
        names = {name.lower() for name in got["headers"]}
        assert "authorization" not in names and "x-secret" not in names
        assert got["headers"]["X-Forwarded-Prefix"] == "/services/default/chat"

        # requests keep succeeding while replica 0 stops, and go to replica 1 alone
        await asyncio.to_thread(c.api.stop, f"{service_id}[0]")
        caplog.clear()
        while (await c.job(f"{service_id}[0]")).status != "stopped":
            assert (await caller.get("/services/default/chat/who"))[0] == 200
        assert set(_chosen(caplog)) == {"chat[1]"}
        answers = [await caller.get("/services/default/chat/who") for _ in range(4)]
        assert answers == [(200, b"replica 1")] * 4

        # stopping the service stops every replica; then it is not found
        await asyncio.to_thread(c.api.stop, service_id)
        await c.wait_for(f"{service_id}[1]", "stopped")
        status, _ = await caller.get("/services/default/chat/who")
        assert status == 404


async def test_the_cli_submits_a_service_and_ps_shows_its_url(one_host: Cluster, tmp_path: Path) -> None:
    c = one_host
    config = save_cli_config(c.api.config, tmp_path / "config.yaml")
    spec_file = tmp_path / "web.yaml"
    spec_file.write_text(_service("web", _free_port(), "env: [APP]\n"))
    env = dict(os.environ, GPUCTL_CONFIG=str(config), APP=APP, COLUMNS="300")  # the URL on one line
    url = f"{c.coordinator.url}/services/default/web/"
    submitted = await _cli(env, "submit", "-f", str(spec_file))
    assert re.fullmatch(rf"service [0-9a-f]{{8}} \(web\[0-0\]\) at {re.escape(url)}\n", submitted)
    listed = await _cli(env, "ps")
    assert url in listed and "web[0-0]" in listed


async def _cli(env: dict[str, str], *args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, [*GPUCTL, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _chosen(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The replica each request went to, in order, from the coordinator's log."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("service default/chat: ")]
    return [line.rsplit(" to ", 1)[1] for line in lines]


@pytest.fixture
async def one_host() -> AsyncIterator[Cluster]:
    async with cluster() as c:
        c.start_agent("host-a", "2xH100:80GB")
        yield c


async def test_only_the_projects_members_call_a_service_unless_auth_is_off(one_host: Cluster) -> None:
    c = one_host
    closed, opened = _free_port(), _free_port()
    await _submit(c, _service("private", closed))
    await _submit(c, _service("public", opened, "auth: false\n"))
    with pytest.raises(ApiError, match="service private already runs in project default; stop it first"):
        await _submit(c, _service("private", _free_port()))
    with pytest.raises(ApiError, match="replicas: a service's replicas are its array"):
        await asyncio.to_thread(c.api.submit_array, parse_spec(_service("arr", 80)), "0-1")
    await asyncio.to_thread(c.api.create_project, "other")
    outsider = await asyncio.to_thread(c.api.create_user, UserCreate(name="eve", project="other"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(c))) as session:
        member = Caller(c, session, c.api.config.token)
        assert await member.until_ok("/services/default/private/who") == b"replica 0"
        assert (await Caller(c, session, None).get("/services/default/private/who"))[0] == 401
        assert (await Caller(c, session, "not-a-token").get("/services/default/private/who"))[0] == 401
        status, body = await Caller(c, session, outsider.token).get("/services/default/private/who")
        assert status == 403 and b"only members of the service's project" in body

        anyone = Caller(c, session, None)
        assert await anyone.until_ok("/services/default/public/who") == b"replica 0"
        claims = {"Forwarded": "for=10.0.0.1", "X-Real-IP": "10.0.0.1", "X-Forwarded-For": "10.0.0.1"}
        status, body = await Caller(c, session, "its-own-token").get(
            "/services/default/public/echo-request", headers=claims
        )
        got = json.loads(body)["headers"]
        assert got["Authorization"] == "Bearer its-own-token"  # not ours: it passes
        # a gpuctl token sent anyway (a script that sends it everywhere, an admin's) never reaches a replica,
        # whose code any member of its project wrote: it would act as the caller
        _, body = await member.get("/services/default/public/echo-request")
        assert "Authorization" not in json.loads(body)["headers"]
        # who called is the coordinator's to say: a caller's own claim never reaches the replica
        assert "Forwarded" not in got and "X-Real-IP" not in got and got["X-Forwarded-For"] == "127.0.0.1", (
            got
        )

        # paths that climb out of the service, encoded or not, never reach a replica nor the API
        for path in (
            "/services/default/private/%2e%2e/%2e%2e/api/v1/jobs",
            "/services/default/private/a/%2E/b",
        ):
            status, body = await member.get(path)
            assert status == 400 and b"dot segments" in body, (path, body)
        status, body = await member.get("/services/default/private/bad-header")  # a header smuggled in
        assert status == 502 and b"a bad header line in the answer" in body, body
        assert (await member.get("/services/default/nothing/who"))[0] == 404
        async with session.get(
            f"{c.coordinator.url}/services/default/private", allow_redirects=False
        ) as answer:
            assert (answer.status, answer.headers["Location"]) == (308, "/services/default/private/")
        assert (await member.get("/services/other/private/who"))[0] == 404


async def test_a_console_session_never_reaches_a_replica_nor_is_set_by_one(one_host: Cluster) -> None:
    """Services share the console's origin, so a browser logged into the console sends its session cookie
    (Path=/) with every call to a service: the replica, whose code any member of its project wrote, would act
    as whoever called it. The cookie is taken off the request, the replica's other cookies pass, and a cookie
    the replica sets under the session's name (its own session, to log the caller into it) is dropped, as are
    the headers with which its pages could reach into a console window."""
    c = one_host
    port = _free_port()
    await _submit(c, _service("public", port, "auth: false\n"))
    async with console(c) as ui:
        await ui.login(c.api.config.token)
        session = ui.http.cookie_jar.filter_cookies(URL(c.coordinator.url))[COOKIE].value
        ui.http.cookie_jar.update_cookies({"app": "kept"}, URL(c.coordinator.url))
        anyone = Caller(c, ui.http, None)
        await anyone.until_ok("/services/default/public/who")

        _, body = await anyone.get("/services/default/public/echo-request")
        sent = json.loads(body)["headers"]
        assert session not in body.decode() and sent["Cookie"] == "app=kept", sent
        async with ui.http.get(f"{c.coordinator.url}/services/default/public/set-cookies") as answer:
            assert answer.headers.getall("Set-Cookie") == ["app=1; Path=/"]
        assert ui.http.cookie_jar.filter_cookies(URL(c.coordinator.url))[COOKIE].value == session
        # a page of the replica may not share the console's opener policy (it would read a console window it
        # opens), nor widen a service worker's scope to the console's pages
        async with ui.http.get(f"{c.coordinator.url}/services/default/public/probe") as answer:
            assert answer.status == 200 and answer.headers["Content-Type"] == "text/html"
            assert "Cross-Origin-Opener-Policy" not in answer.headers
            assert "Service-Worker-Allowed" not in answer.headers


async def test_a_replica_whose_port_does_not_listen_takes_no_request(one_host: Cluster) -> None:
    c = one_host
    deaf_id = await _submit(c, _service("deaf", _free_port(), command="sleep 600"))
    await c.wait_for(f"{deaf_id}[0]", "running")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(c))) as session:
        caller = Caller(c, session, c.api.config.token)
        # not even a request that could not be retried elsewhere is sent: the check keeps it from the replica
        status, body = await caller.request(
            "POST", "/services/default/deaf/", data=io.BytesIO(b"x" * 100_000)
        )
        assert status == 503 and b"service deaf: no replica is ready (1 of 1 running)" in body, body
        assert (await caller.get("/services/default/deaf/"))[0] == 503


async def test_a_failed_replica_is_restarted_per_its_retry_policy(one_host: Cluster) -> None:
    """dstack's `retry:` acts on each replica: one that exits with an error starts again and serves."""
    c = one_host
    service_id = await _submit(c, _service("phoenix", _free_port(), "retry: {on_events: [error]}\n"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(c))) as session:
        caller = Caller(c, session, c.api.config.token)
        await caller.until_ok("/services/default/phoenix/who")
        assert (await caller.get("/services/default/phoenix/exit"))[0] == 502  # its answer never came
        assert (await c.job(f"{service_id}[0]")).attempt == 1
        assert await caller.until_ok("/services/default/phoenix/who") == b"replica 0"
        assert (await c.job(f"{service_id}[0]")).attempt == 2


async def test_a_chunked_answer_streams_and_a_large_body_goes_up_whole(
    one_host: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    c = one_host
    port = _free_port()
    await _submit(c, _service("stream", port))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(c))) as session:
        caller = Caller(c, session, c.api.config.token)
        await stream_passes_chunk_by_chunk(caller, "/services/default/stream")
        headers = {"Authorization": f"Bearer {c.api.config.token}"}

        body = os.urandom(3 * 1024 * 1024)  # past what is held whole for a retry: streamed up
        status, answer = await caller.request(
            "POST", "/services/default/stream/upload", data=io.BytesIO(body)
        )
        assert (status, answer) == (200, f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())

        async def pieces() -> AsyncIterator[bytes]:  # no length known: the body goes up chunked
            for start in range(0, len(body), 100_000):
                yield body[start : start + 100_000]

        upload = f"{c.coordinator.url}/services/default/stream/upload"
        async with session.post(upload, data=pieces(), headers=headers) as response:
            answer = await response.read()
        assert answer == f"{len(body)} {hashlib.sha256(body).hexdigest()} chunked".encode()

        # a caller who goes mid-answer: the replica's stream closes, and nothing is an internal error
        async with session.get(
            f"{c.coordinator.url}/services/default/stream/drip", headers=headers
        ) as response:
            assert await response.content.readuntil(b"\n") == b"drop\n"
            response.close()
        streams = _coordinator_streams(c)
        await _until(lambda: not streams(), "the replica's stream to close")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_100_mb_answer_to_a_slow_caller_is_not_held_by_the_coordinator(one_host: Cluster) -> None:
    """The caller stops reading: the coordinator holds at most the stream's window, and the process does not
    grow by the answer's size; then all of it arrives."""
    c = one_host
    port, size = _free_port(), 100 * 1000 * 1000
    await _submit(c, _service("big", port))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(c))) as session:
        await Caller(c, session, c.api.config.token).until_ok("/services/default/big/who")
    host, tls_port = URL(c.coordinator.url).host, URL(c.coordinator.url).port
    rss_before = _rss_bytes()
    reader, writer = await asyncio.open_connection(host, tls_port, ssl=_ssl(c))
    writer.write(
        f"GET /services/default/big/zeros/{size} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {c.api.config.token}\r\nConnection: close\r\n\r\n".encode()
    )
    await _stalls_on_its_window(c, rss_before, size)
    received = 0
    while piece := await reader.read(1 << 20):
        received += len(piece)
    writer.close()
    assert received > size  # the body and the head
    assert _rss_bytes() - rss_before < size // 4


async def test_calls_held_open_leave_the_agents_other_streams_free(one_host: Cluster) -> None:
    """Calls whose answers do not end (a slow model; with auth: false, anyone's, from a few addresses) take
    at most the services' share of an agent's streams: past it a call is answered 503, and exec still
    reaches the host's jobs."""
    c = one_host
    service_id = await _submit(c, _service("slow", _free_port(), "auth: false\n"))
    url = f"{c.coordinator.url}/services/default/slow/stream"  # its last chunk never comes here
    addresses = 1 + MAX_STREAMS_PER_AGENT // UNAUTHENTICATED_CONNECTIONS_PER_ADDRESS  # each holds up to that
    async with contextlib.AsyncExitStack() as held:
        sessions = [
            await held.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=_ssl(c), limit=0, local_addr=(f"127.0.0.{n + 2}", 0))
                )
            )
            for n in range(addresses)
        ]
        await Caller(c, sessions[0], None).until_ok("/services/default/slow/who")
        statuses = []
        for n in range(MAX_STREAMS_PER_AGENT):
            response = await held.enter_async_context(sessions[n % addresses].get(url))
            statuses.append(response.status)
        assert statuses.count(200) == SERVICE_STREAMS_PER_AGENT, statuses
        assert statuses[-1] == 503 and b"try again" in await response.read()
        code, output = await _exec(c, ExecRequest(f"{service_id}[0]", ("echo", "in")))
        assert (code, output.out) == (0, "in\n"), output.by_fd


def test_hop_by_hop_headers_and_framing_stay_on_this_side() -> None:
    head = ResponseHead(
        200,
        "OK",
        CIMultiDict(
            [
                ("Content-Type", "text/plain"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "3"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ]
        ),
    )
    assert list(response_headers(head).items()) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert content_length(head) is None  # chunked wins over a length
    assert request_head("GET", "/v1/models", [("Accept", "*/*")], "") == (
        b"GET /v1/models HTTP/1.1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    assert chunk(b"abc") == b"3\r\nabc\r\n" and chunk(b"") == b"0\r\n\r\n"


@pytest.mark.parametrize("value", ["²", "1" * 5000, "-1", "0x10", ""])
def test_a_bad_content_length_from_a_replica_is_its_fault_not_ours(value: str) -> None:
    """A length that str.isdigit() passes but int() refuses (a superscript, past int()'s 4300 digits) is an
    answer that breaks HTTP (502), never an internal error."""
    head = ResponseHead(200, "OK", CIMultiDict([("Content-Length", value)]))
    with pytest.raises(UpstreamError, match="a bad Content-Length in the answer"):
        content_length(head)
