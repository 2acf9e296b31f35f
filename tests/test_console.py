"""The web console over plain HTTP (a real coordinator, real TLS, aiohttp's client): login, sessions, CSRF,
who sees what, and escaping. tests/test_console_browser.py drives it in a real browser."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from coordinator.accounts import Principal
from coordinator.console_pages import jobs_page
from coordinator.console_sessions import CSRF_HEADER, Sessions
from shared.spec import parse_spec
from shared.wire import JobView
from tests.harness import Cluster, cluster
from tests.test_metrics import member_of

# no host of these tests has 8 GPUs: it waits
PENDING = "name: {name}\nresources: {{gpu: 8}}\ncommands:\n  - {command}\n"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Console:
    """One browser's worth of the console: a cookie jar, no redirects followed (the tests read them)."""

    def __init__(self, c: Cluster, http: aiohttp.ClientSession) -> None:
        self.url, self.http = c.coordinator.url, http

    async def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(self.url + path, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text(), response

    async def script_read(self, path: str, csrf: str) -> int:
        """A read of the user API as the console's script makes it: the cookie and the page's CSRF token."""
        return (
            await self.get(path, {CSRF_HEADER: csrf, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"})
        )[0]

    async def post(
        self, path: str, form: dict[str, str], site: str = "same-origin", mode: str = "navigate"
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        """`site`: where the browser says the form came from (Sec-Fetch-Site); `mode`: how (Sec-Fetch-Mode:
        a form's submission, or a script's fetch)."""
        headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode}
        async with self.http.post(
            self.url + path, data=form, headers=headers, allow_redirects=False
        ) as response:
            return response.status, await response.text(), response

    async def login(self, token: str) -> str:
        """Log in; answers the CSRF token that the session's pages carry."""
        status, _, response = await self.post("/ui/login", {"token": token})
        assert status == 303 and response.headers["Location"] == "/ui/jobs", status
        return await self.csrf()

    async def csrf(self) -> str:
        status, page, _ = await self.get("/ui/jobs")
        assert status == 200, page
        found = CSRF.search(page)
        assert found is not None, page
        return found.group(1)


@asynccontextmanager
async def console(c: Cluster) -> AsyncIterator[Console]:
    context = ssl.create_default_context(cafile=str(c.coordinator.pki.ca_cert))
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), cookie_jar=jar) as http:
        yield Console(c, http)


def admin_token(c: Cluster) -> str:
    return c.api.config.token


async def test_a_token_logs_in_with_a_strict_cookie_and_logout_ends_the_session() -> None:
    async with cluster() as c, console(c) as ui:
        status, page, _ = await ui.post("/ui/login", {"token": "gpuctl_not-a-token"})
        assert status == 401 and "unknown API token" in page
        status, page, _ = await ui.post("/ui/login", {"token": admin_token(c)}, site="cross-site")
        assert status == 403 and "another site" in page  # login CSRF: another site's form, its token
        assert not ui.http.cookie_jar.filter_cookies(c.coordinator.url)  # no session for either
        assert (await ui.get("/ui/jobs"))[2].headers["Location"] == "/ui/login"

        _, _, response = await ui.post("/ui/login", {"token": admin_token(c)})
        cookie = response.headers["Set-Cookie"]
        for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
            assert attribute in cookie, cookie
        assert admin_token(c) not in cookie  # the cookie names a session, not the token
        status, page, response = await ui.get("/ui/jobs")
        assert status == 200 and "Log out" in page
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp

        csrf = CSRF.search(page)
        assert csrf is not None
        assert (await ui.post("/ui/logout", {"csrf": csrf.group(1)}))[0] == 303
        ui.http.cookie_jar.update_cookies({"gpuctl_session": cookie.split(";")[0].split("=", 1)[1]})
        assert (await ui.get("/ui/jobs"))[0] == 303  # the old cookie's session ended


async def test_without_a_session_pages_send_to_the_login_and_actions_are_refused() -> None:
    async with cluster() as c, console(c) as ui:
        job = await c.submit(PENDING.format(name="waits", command="sleep 60"))
        for path in ("/ui/jobs", f"/ui/jobs/{job.id}", "/ui/hosts", "/ui/queue"):
            status, _, response = await ui.get(path)
            assert (status, response.headers["Location"]) == (303, "/ui/login"), path
        assert (await ui.get("/ui/"))[2].headers["Location"] == "/ui/jobs"
        status, _, _ = await ui.post(f"/ui/jobs/{job.id}/stop", {"csrf": "x"})
        assert status == 403
        assert (await c.job(job.id)).status == "pending"
        assert (await ui.get(f"/api/v1/jobs/{job.id}/logs"))[0] == 401  # no session, no token


async def test_an_action_without_the_sessions_csrf_token_is_refused() -> None:
    async with cluster() as c, console(c) as ui:
        job = await c.submit(PENDING.format(name="waits", command="sleep 60"))
        csrf = await ui.login(admin_token(c))
        for form in ({}, {"csrf": ""}, {"csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")}):
            status, page, _ = await ui.post(f"/ui/jobs/{job.id}/stop", form)
            assert status == 403 and "CSRF" in page, form
        status, page, _ = await ui.post(f"/ui/jobs/{job.id}/stop", {"csrf": csrf}, site="same-site")
        assert status == 403 and "another site" in page
        assert (await c.job(job.id)).status == "pending"
        status, _, response = await ui.post(f"/ui/jobs/{job.id}/stop", {"csrf": csrf})
        assert (status, response.headers["Location"]) == (303, f"/ui/jobs/{job.id}")
        assert (await c.job(job.id)).status == "stopped"


async def test_what_a_pages_script_asks_of_the_console_is_refused() -> None:
    """A service's page shares the console's origin and its visitor's cookie: the console's pages answer
    only the browser's window (a script's fetch of one would read its CSRF token), and the cookie reads a
    job's log only beside the session's CSRF token, which only the console's pages hold."""
    async with cluster() as c, console(c) as ui:
        job = await c.submit(PENDING.format(name="waits", command="sleep 60"))
        csrf = await ui.login(admin_token(c))
        window = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "same-origin"}
        status, page, response = await ui.get("/ui/jobs", window)
        assert status == 200 and f'<meta name="gpuctl-csrf" content="{csrf}">' in page
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        for mode, dest in (("cors", "empty"), ("no-cors", "empty"), ("navigate", "iframe")):
            status, page, _ = await ui.get(
                "/ui/jobs", window | {"Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest}
            )
            assert status == 403 and csrf not in page and "not from a page" in page, (mode, dest)
        status, page, _ = await ui.post("/ui/login", {"token": admin_token(c)}, mode="cors")
        assert status == 403 and "script" in page

        logs = f"/api/v1/jobs/{job.id}/logs"
        assert await ui.script_read(logs, csrf) == 200
        assert (await ui.get(logs))[0] == 401  # the cookie alone
        assert await ui.script_read(logs, csrf[:-1] + ("A" if csrf[-1] != "A" else "B")) == 401


async def test_a_member_sees_only_its_projects_jobs_and_cannot_drain() -> None:
    async with cluster() as c, console(c) as ui:
        c.start_agent("h1", "1xH100:80GB")
        vision, audio = await member_of(c, "vision"), await member_of(c, "audio")
        theirs = await asyncio.to_thread(audio.submit, parse_spec(PENDING.format(name="theirs", command="x")))
        ours = await asyncio.to_thread(vision.submit, parse_spec(PENDING.format(name="ours", command="x")))
        csrf = await ui.login(vision.config.token)

        status, page, _ = await ui.get("/ui/jobs?state=all")
        assert status == 200 and ours.id in page and theirs.id not in page
        assert (await ui.get(f"/ui/jobs/{theirs.id}"))[0] == 404
        assert await ui.script_read(f"/api/v1/jobs/{theirs.id}/logs", csrf) == 404  # the script's read, too
        assert await ui.script_read(f"/api/v1/jobs/{ours.id}/logs", csrf) == 200
        assert await ui.script_read(f"/api/v1/jobs/{ours.id}/metrics", csrf) == 200
        assert (
            await ui.script_read("/api/v1/jobs", csrf) == 401
        )  # the cookie reads a job's log and readings only
        assert (await ui.post(f"/ui/jobs/{theirs.id}/stop", {"csrf": csrf}))[0] == 404
        assert (await c.job(theirs.id)).status != "stopped"
        status, page, _ = await ui.get("/ui/queue")
        assert ours.id in page and theirs.id not in page

        status, page, _ = await ui.get("/ui/hosts")  # every host, as `gpuctl hosts` shows them
        assert status == 200 and "h1" in page and "Drain" not in page
        host = next(h for h in await asyncio.to_thread(c.api.hosts) if h.name == "h1")
        status, page, _ = await ui.post(f"/ui/hosts/{host.id}/drain", {"csrf": csrf})
        assert status == 403 and "admin" in page
        assert next(h for h in await asyncio.to_thread(c.api.hosts) if h.name == "h1").status == "ready"


async def test_an_admin_drains_a_host_and_filters_jobs_by_project_and_state() -> None:
    async with cluster() as c, console(c) as ui:
        c.start_agent("h1", "1xH100:80GB")
        vision, audio = await member_of(c, "vision"), await member_of(c, "audio")
        theirs = await asyncio.to_thread(audio.submit, parse_spec(PENDING.format(name="theirs", command="x")))
        ours = await asyncio.to_thread(vision.submit, parse_spec(PENDING.format(name="ours", command="x")))
        await asyncio.to_thread(c.api.stop, ours.id)
        csrf = await ui.login(admin_token(c))

        page = (await ui.get("/ui/jobs?state=all&project=vision"))[1]
        assert ours.id in page and theirs.id not in page
        page = (await ui.get("/ui/jobs"))[1]  # unfinished ones, of every project
        assert theirs.id in page and ours.id not in page
        page = (await ui.get("/ui/jobs?state=stopped"))[1]
        assert ours.id in page and theirs.id not in page
        status, page, _ = await ui.get("/ui/jobs?state=<b>")
        assert status == 400 and "state: expected one of" in page and "<b>" not in page

        host = await wait_host_ready(c, "h1")
        assert f'action="/ui/hosts/{host}/drain"' in (await ui.get("/ui/hosts"))[1]
        status, _, response = await ui.post(f"/ui/hosts/{host}/drain", {"csrf": csrf})
        assert (status, response.headers["Location"]) == (303, "/ui/hosts")
        assert next(h for h in await asyncio.to_thread(c.api.hosts) if h.name == "h1").status == "draining"


async def wait_host_ready(c: Cluster, name: str) -> str:
    async with asyncio.timeout(60):
        while True:
            hosts = await asyncio.to_thread(c.api.hosts)
            found = [h for h in hosts if h.name == name and h.status == "ready" and h.total_blocks]
            if found:
                return found[0].id
            await asyncio.sleep(0.05)


async def test_what_users_wrote_shows_as_text_not_html() -> None:
    async with cluster() as c, console(c) as ui:
        attack = "echo '<script>alert(1)</script>' \"&amp;\""
        job = await c.submit(PENDING.format(name="xss", command=attack))
        await ui.login(admin_token(c))
        status, page, _ = await ui.get(f"/ui/jobs/{job.id}")
        assert status == 200
        assert "<script>alert" not in page
        assert "echo &#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27; &quot;&amp;amp;&quot;" in page
        status, page, _ = await ui.get("/ui/jobs/<img src=x>")
        assert status == 404 and "<img" not in page and "&lt;img src=x&gt;" in page


def test_a_job_name_is_escaped_wherever_it_shows() -> None:
    """Submit refuses such a name (shared/spec), but the page escapes it whatever the store holds."""
    spec = parse_spec("commands: [true]\n")
    view = JobView(
        id="1",
        name="<script>x</script>",
        status="pending",
        reason="<b>",
        priority=0,
        submitted_at=0.0,
        spec=spec,
    )
    page = jobs_page([view], "", "", ["<i>"], Principal("a", "admin", None), '"><script>')
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<b>" not in page and "<i>" not in page and '"><script>' not in page


def test_a_session_ends_at_its_time_and_the_oldest_goes_past_the_limit() -> None:
    sessions = Sessions(ttl_s=60, limit=2)
    who = Principal("a", "member", "vision")
    first = sessions.open(who, now=1000.0)
    assert sessions.get(first, now=1059.0) is not None
    assert sessions.get(first, now=1060.0) is None  # ended: gone for good
    assert sessions.get(first, now=1000.0) is None
    a, b, c = (sessions.open(who, now=2000.0) for _ in range(3))
    assert sessions.get(a, now=2000.0) is None and sessions.get(b, now=2000.0) and sessions.get(c, now=2000.0)
    sessions.close(b)
    sessions.close(b)  # idempotent
    assert sessions.get(b, now=2000.0) is None


def test_one_user_logging_in_again_and_again_ends_only_its_own_sessions() -> None:
    """Past its share of the sessions, a user's oldest ends, not another user's: a member that logs in
    10,000 times would otherwise have logged every other user out."""
    sessions = Sessions(ttl_s=60, limit=4, per_user=2)
    eve, ann = Principal("eve", "member", "vision"), Principal("ann", "admin", None)
    kept = sessions.open(ann, now=1000.0)
    eves = [sessions.open(eve, now=1000.0) for _ in range(10)]
    assert sessions.get(kept, now=1000.0) is not None
    assert [sessions.get(s, now=1000.0) is not None for s in eves] == [False] * 8 + [True] * 2
