"""Agents and the CLI that know several coordinators: a dead one is passed over, a coordinator that dies mid-job
is replaced by the next with nothing lost or repeated, and a join string carries the list. Real coordinators
(real TLS), a real agent, the real CLI. Two coordinators over one store are simulated without PostgreSQL by
the SQLite same-state trick: process A is killed (SIGKILL), process B starts on A's state dir at another URL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from agent.agent import detect, run_agent
from agent.client import ApiError as AgentApiError
from agent.client import CoordinatorClient, fails_over
from agent.config import AgentConfig, ConfigError, load_config
from cli.api import Api, ApiError
from cli.config import CliConfig, NoConfig, load_cli_config, save_cli_config
from coordinator.pki import ensure_pki, issue_agent_cert
from shared import tls
from shared.aio import cancel_and_wait
from shared.coordinators import parse_coordinators
from shared.join import JoinString, parse_join_string
from shared.spec import parse_spec
from shared.wire import JobView, TokenCreate
from tests.harness import cluster, kill_leftover_jobs, reachable_tmpdir
from tests.sshd import free_port
from tests.test_cli import ROOT, gpuctl
from tests.test_coordinator_cli import INIT

TICKER = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.02; done"


def dead_url() -> str:
    """A coordinator that is not there: nothing listens on the port (connections are refused)."""
    return f"https://localhost:{free_port()}"


def numbered_lines(log: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"^line (\d+)$", log, re.MULTILINE)]


async def lines_seen(api: Api, job_id: str, at_least: int) -> int:
    """Wait until the job's log (as the coordinator that answers holds it) has `at_least` lines; answer how
    many it has."""
    async with asyncio.timeout(60):
        while True:
            chunk = await asyncio.to_thread(api.logs, job_id, 0, False)
            if len(lines := numbered_lines(chunk.data)) >= at_least:
                return len(lines)
            await asyncio.sleep(0.05)


async def wait_status(api: Api, job_id: str, status: str) -> JobView:
    async with asyncio.timeout(60):
        while True:
            job = await asyncio.to_thread(api.job, job_id)
            if job.status == status:
                return job
            await asyncio.sleep(0.1)


async def full_log(api: Api, job_id: str) -> bytes:
    out, offset = b"", 0
    async with asyncio.timeout(60):
        while True:
            chunk = await asyncio.to_thread(api.logs, job_id, offset, True)
            out, offset = out + chunk.data, chunk.next_offset
            if chunk.complete:
                return out


async def test_an_agent_whose_first_coordinator_is_dead_syncs_with_the_next() -> None:
    async with cluster() as c:
        c.start_agent("two-urls", "1xL4", coordinator=(dead_url(), c.coordinator.url))
        job = await c.submit("commands: ['echo reached']\nresources: {gpu: 1}")
        assert await c.full_log(job.id) == b"reached\n"
        assert (await c.job(job.id)).status == "done"


def coordinator_process(state_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`gpuctl-coordinator run` on `state_dir` at https://localhost:`port`, as systemd would run it."""
    argv = [sys.executable, "-c", "from coordinator.main import main; main()", "run", "--state-dir"]
    argv += [
        str(state_dir),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--config",
        str(state_dir / "none.yaml"),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def admin_api(state_dir: Path, urls: tuple[str, ...], ca_file: Path) -> Api:
    """A client of the coordinators with the admin token, once one of them answers."""
    token_file = state_dir / "admin-token"
    async with asyncio.timeout(30):
        while True:
            if token_file.exists():
                api = Api(CliConfig(urls, token_file.read_text().strip(), ca_file), timeout_s=30.0)
                with contextlib.suppress(ApiError):
                    await asyncio.to_thread(api.hosts)
                    return api
            await asyncio.sleep(0.1)


async def test_kill_9_of_the_coordinator_mid_job_the_agent_goes_on_at_the_next_with_no_log_line_lost_or_repeated() -> (
    None
):
    root = reachable_tmpdir()
    state, a_port, b_port = root / "coordinator", free_port(), free_port()
    urls = (f"https://localhost:{a_port}", f"https://localhost:{b_port}")
    state.mkdir(mode=0o700)
    pki = ensure_pki(state, ["localhost", "127.0.0.1"])
    a = coordinator_process(state, a_port, root / "a.log")
    agent: asyncio.Task[None] | None = None
    try:
        api = await admin_api(state, urls, pki.ca_cert)  # both URLs, as a user's config would name them
        cert, key = issue_agent_cert(pki, "mover", root / "mover" / "pki")
        config = AgentConfig(
            urls,
            root / "mover",
            "mover",
            simulate="1xL4",
            ca_file=pki.ca_cert,
            cert_file=cert,
            key_file=key,
            stop_grace_s=2.0,
        )
        agent = asyncio.create_task(run_agent(config, detect(config)))
        job = await asyncio.to_thread(
            api.submit, parse_spec(f"commands: ['{TICKER}']\nresources: {{gpu: 1}}", environ={})
        )
        running = await wait_status(api, job.id, "running")
        before = await lines_seen(api, job.id, 20)

        a.kill()  # SIGKILL: no goodbye to the agent's long poll, the store left as a crash leaves it
        a.wait()
        b = coordinator_process(state, b_port, root / "b.log")
        try:
            await admin_api(state, urls, pki.ca_cert)  # B is up (a user would try again until then)
            await lines_seen(api, job.id, before + 50)  # B hears the job's output go on
            at_b = await asyncio.to_thread(api.job, job.id)
            assert api.url == urls[1]  # the user's client moved on too
            assert (at_b.status, at_b.attempt, at_b.host) == ("running", running.attempt, running.host)
            await asyncio.to_thread(api.stop, job.id)  # through B
            stopped = await wait_status(api, job.id, "stopped")
            assert stopped.attempt == running.attempt  # one attempt, kept across the failover
            lines = numbered_lines(await full_log(api, job.id))
            assert lines == list(range(1, len(lines) + 1)), "a log line was lost or repeated"
            assert len(lines) >= before + 50
        finally:
            b.kill()
            b.wait()
    finally:
        if agent is not None:
            await cancel_and_wait(agent)
        a.kill()
        a.wait()
        kill_leftover_jobs(root)
        shutil.rmtree(root, ignore_errors=True)


async def test_the_cli_passes_over_a_dead_coordinator_and_says_which_answered_only_in_debug(
    tmp_path: Path,
) -> None:
    async with cluster() as c:
        c.start_agent("cli-host", "1xL4")
        dead, live = dead_url(), c.coordinator.url
        config = tmp_path / "config.yaml"
        save_cli_config(CliConfig((dead, live), c.api.config.token, c.api.config.ca_file), config)
        assert json.loads(config.read_text())["url"] == [dead, live]
        env = dict(os.environ, GPUCTL_CONFIG=str(config))
        spec = tmp_path / "job.yaml"
        spec.write_text("commands: ['echo via the second']\nresources: {gpu: 1}\n")

        submitted = await asyncio.to_thread(gpuctl, env, "submit", "-d", "-f", str(spec))
        assert submitted.returncode == 0 and submitted.stderr == "", submitted.stderr
        job_id = submitted.stdout.strip()
        assert await c.full_log(job_id) == b"via the second\n"

        quiet = await asyncio.to_thread(gpuctl, env, "ps", "--json", "-a")
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
        assert [j["id"] for j in json.loads(quiet.stdout)] == [job_id]
        loud = await asyncio.to_thread(gpuctl, env, "--debug", "ps", "--json", "-a")
        assert loud.returncode == 0, loud.stderr
        assert f"cannot reach the coordinator at {dead}" in loud.stderr
        assert f"gpuctl: {live} answered GET /jobs (200)" in loud.stderr

        sleeper = await c.submit("commands: ['sleep 600']\nresources: {gpu: 1}")
        await c.wait_for(sleeper.id, "running")
        inside = await asyncio.to_thread(gpuctl, env, "exec", sleeper.id, "--", "echo", "inside")
        assert (inside.returncode, inside.stdout, inside.stderr) == (0, "inside\n", "")


async def test_a_join_string_with_two_urls_enrolls_and_the_host_runs_without_a_coordinator_setting() -> None:
    from click.testing import CliRunner

    from agent.main import main

    async with cluster() as c:
        dead, live = dead_url(), c.coordinator.url
        coord = c.coordinator.coordinator
        coord.settings = dataclasses.replace(coord.settings, advertise_urls=(dead, live))
        created = await asyncio.to_thread(c.api.create_token, TokenCreate(fleet="dc1", uses=1))
        assert created.join_string.startswith("gpuctl-join-v2.")
        assert parse_join_string(created.join_string).urls == (dead, live)

        state, no_file = c.root / "joiner", c.root / "none.yaml"
        args = ["join", created.join_string, "--no-run", "--state-dir", str(state), "--name", "joiner"]
        joined = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--config", str(no_file)])
        assert joined.exit_code == 0 and "joined as host h-" in joined.output, joined.output

        config = load_config(no_file, {"state_dir": str(state), "name": "joiner", "simulate": "1xL4"})
        assert config.urls == (dead, live)  # kept from the join string, for runs without `coordinator:`
        c.agents["joiner"] = asyncio.create_task(run_agent(config, detect(config)))
        job = await c.submit("commands: ['echo joined twice over']\nresources: {gpu: 1}")
        assert await c.full_log(job.id) == b"joined twice over\n"


def test_one_url_or_a_list_and_a_bad_entry_is_one_line_naming_the_field_and_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_coordinators("https://a:8443/") == ("https://a:8443",)
    assert parse_coordinators(["https://a", "https://b:1", "https://a"]) == ("https://a", "https://b:1")
    for bad, message in [
        (["https://a", "b.example"], "coordinator[1]: expected an https://HOST[:PORT] URL, got 'b.example'"),
        (["https://a", "http://b"], "coordinator[1]: expected an https://HOST[:PORT] URL, got 'http://b'"),
        ([7], "coordinator[0]: expected an https://HOST[:PORT] URL, got 7"),
        (["https://a#b"], "coordinator[0]: expected an https://HOST[:PORT] URL, got 'https://a#b'"),
        (["https://a?"], "coordinator[0]: expected an https://HOST[:PORT] URL, got 'https://a?'"),
        ([], "coordinator: expected an https:// URL or a list of them, got []"),
    ]:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            parse_coordinators(bad)

    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text("coordinator: [https://a.example:8443, https://b.example:8443:x]\n")
    with pytest.raises(ConfigError, match=r"^coordinator\[1\]: expected an https://HOST\[:PORT\] URL"):
        load_config(agent_yaml, {"state_dir": str(tmp_path)})
    agent_yaml.write_text("coordinator: [https://a.example:8443, https://b.example]\n")
    assert load_config(agent_yaml, {}).urls == ("https://a.example:8443", "https://b.example")

    cli_yaml = tmp_path / "cli.yaml"
    cli_yaml.write_text("url: [https://a.example, not-a-url]\ntoken: t\nca_file: /ca.pem\n")
    monkeypatch.setenv("GPUCTL_CONFIG", str(cli_yaml))
    with pytest.raises(NoConfig, match=re.escape(f"{cli_yaml}: url[1]: expected an https://HOST[:PORT] URL")):
        load_cli_config()
    ran = gpuctl(dict(os.environ), "ps")
    assert ran.returncode == 1 and len(ran.stderr.strip().splitlines()) == 1 and "url[1]" in ran.stderr


def test_the_agent_command_says_a_bad_list_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from agent.main import main

    config = tmp_path / "agent.yaml"
    config.write_text(f"state_dir: {tmp_path}\ncoordinator: [https://a.example, ftp://b.example]\n")
    token = JoinString("abcdefgh", "s" * 16, "sha256:" + "0" * 64)
    ran = CliRunner().invoke(main, ["join", str(token), "--no-run", "--config", str(config)])
    assert ran.exit_code == 1 and "Traceback" not in ran.output
    assert ran.output.strip().splitlines() == [
        "Error: coordinator[1]: expected an https://HOST[:PORT] URL, got 'ftp://b.example'"
    ]


def test_join_strings_without_urls_still_parse_and_those_with_urls_round_trip() -> None:
    v1 = "gpuctl-join-v1.abcdefgh." + "s" * 16 + "." + "0" * 64
    assert parse_join_string(v1) == JoinString("abcdefgh", "s" * 16, "sha256:" + "0" * 64)
    assert str(parse_join_string(v1)) == v1
    with_urls = JoinString("abcdefgh", "s" * 16, "sha256:" + "0" * 64, ("https://a:1", "https://b:2"))
    assert re.fullmatch(r"[A-Za-z0-9._-]+", str(with_urls))  # still one word in a shell
    assert parse_join_string(str(with_urls)) == with_urls
    bad = dataclasses.replace(with_urls, urls=("https://a:1", "b"))
    with pytest.raises(ValueError, match=re.escape("join string: coordinator[1]: expected an https://")):
        parse_join_string(str(bad))


def test_advertise_urls_reach_the_login_line_and_a_bad_entry_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 's'}\nadvertise_urls: [https://a.dc1:8443, https://b.dc1:8443]\n"
    )
    init = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert init.returncode == 0, init.stderr
    assert "gpuctl login https://a.dc1:8443 https://b.dc1:8443 --token " in init.stdout

    config.write_text(f"state_dir: {tmp_path / 's'}\nadvertise_urls: [https://a.dc1:8443, b.dc1]\n")
    bad = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "Error: advertise_urls[1]: expected an https://HOST[:PORT] URL, got 'b.dc1'"
    ]


async def test_login_with_a_dead_and_a_live_url_keeps_both_and_the_cli_works(tmp_path: Path) -> None:
    async with cluster() as c:
        dead, live = dead_url(), c.coordinator.url
        env = dict(os.environ, GPUCTL_CONFIG=str(tmp_path / "cli" / "config.yaml"))
        pin = tls.ca_pin(c.coordinator.pki.ca_cert.read_bytes())
        login = ["login", dead, live, "--token", c.api.config.token, "--ca-pin", pin]
        done = await asyncio.to_thread(gpuctl, env, *login)
        assert done.returncode == 0, done.stderr
        assert (
            done.stderr.strip()
            == f"warning: cannot reach the coordinator at {dead}: [Errno 111] Connection refused; kept in the list"
        )
        assert json.loads((tmp_path / "cli" / "config.yaml").read_text())["url"] == [dead, live]
        listed = await asyncio.to_thread(gpuctl, env, "ps", "--json")
        assert (listed.returncode, json.loads(listed.stdout)) == (0, []), listed.stderr

        wrong = [*login[:-1], "sha256:" + "0" * 64]
        refused = await asyncio.to_thread(gpuctl, dict(env, GPUCTL_CONFIG=str(tmp_path / "x.yaml")), *wrong)
        assert refused.returncode == 1 and f"the coordinator at {live} has a CA whose pin" in refused.stderr


@pytest.mark.parametrize(
    ("error", "moves_on"),
    [
        (AgentApiError(503, "store unavailable"), True),
        (AgentApiError(500, "bug"), True),
        (AgentApiError(426, "protocol 1.x not served"), True),  # a replica not upgraded yet; the next may be
        (
            AgentApiError(429, "busy"),
            False,
        ),  # come back later, here: a whole fleet moving would swamp the next
        (AgentApiError(400, "inventory: bad"), False),
        (AgentApiError(403, "revoked"), False),
        (aiohttp.ClientConnectionError("reset"), True),
        (TimeoutError(), True),  # a silent partition: the long poll's deadline passed
    ],
)
def test_what_moves_an_agent_to_the_next_coordinator(error: Exception, moves_on: bool) -> None:
    assert fails_over(error) is moves_on


async def test_loops_that_see_one_coordinator_fail_move_the_client_on_once() -> None:
    client = CoordinatorClient(("https://a:1", "https://b:2", "https://c:3"), ssl.create_default_context())
    try:
        for _ in ("sync", "logs", "files"):  # each loop reports the failure of the coordinator it used
            client.fail_over("https://a:1", "refused")
        assert client.base_url == "https://b:2"
        client.fail_over("https://b:2", "refused")
        client.fail_over("https://c:3", "refused")
        assert client.base_url == "https://a:1"  # round again
    finally:
        await client.close()
