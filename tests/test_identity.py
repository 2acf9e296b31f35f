"""Joining, renewal, revocation and projects, each against the real coordinator over real TLS."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest

from agent.agent import detect, run_agent
from agent.config import AgentConfig
from agent.identity import CertificateExpired, JoinError, check_not_expired, join
from agent.sync import Revoked
from cli.api import Api, ApiError
from cli.config import CliConfig
from coordinator.service import Settings
from shared import tls
from shared.join import JoinString, parse_join_string
from shared.wire import TokenCreate, UserCreate
from tests.harness import FAST, Cluster, cluster


async def new_token(c: Cluster, **kwargs: object) -> JoinString:
    created = await asyncio.to_thread(c.api.create_token, TokenCreate(fleet="dc1", **kwargs))  # type: ignore[arg-type]
    return parse_join_string(created.join_string)


async def joined_agent(c: Cluster, name: str, join_string: JoinString) -> AgentConfig:
    config = AgentConfig(coordinator=c.coordinator.url, state_dir=c.root / name, name=name, simulate="2xL4")
    await join(config.coordinator, join_string, config.pki_dir, name)
    return config


async def test_a_host_joins_with_a_join_string_and_runs_work() -> None:
    async with cluster() as c:
        config = await joined_agent(c, "gpu-1", await new_token(c, uses=1))
        assert (config.pki_dir / "agent-key.pem").stat().st_mode & 0o777 == 0o600
        task = asyncio.create_task(run_agent(config, detect(config)))
        try:
            job = await c.submit("commands: ['echo joined']\nresources: {gpu: 1}")
            assert await c.full_log(job.id) == b"joined\n"
            (host,) = await asyncio.to_thread(c.api.hosts)
            assert host.name == "gpu-1" and host.id.startswith("h-")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_join_no_run_enrolls_exits_0_and_sends_nothing_a_second_time() -> None:
    from click.testing import CliRunner

    from agent.main import main

    async with cluster() as c:
        created = await asyncio.to_thread(c.api.create_token, TokenCreate(fleet="dc1", uses=1))
        state = c.root / "nodaemon"
        args = ["join", created.join_string, "--no-run", "--coordinator", c.coordinator.url]
        args += ["--state-dir", str(state), "--name", "nodaemon", "--config", str(c.root / "none.yaml")]
        first = await asyncio.to_thread(CliRunner().invoke, main, args)
        assert first.exit_code == 0, first.output
        assert "joined as host h-" in first.output and "systemctl enable --now gpuctl-agent" in first.output
        assert (state / "pki" / "agent.pem").exists()
        (host,) = await asyncio.to_thread(c.api.hosts)
        assert host.name == "nodaemon"
        # the token had one use: a second run must not spend another (it would be refused)
        again = await asyncio.to_thread(CliRunner().invoke, main, args)
        assert again.exit_code == 0 and "already joined" in again.output, again.output


async def test_expired_used_up_forged_and_deleted_tokens_are_refused() -> None:
    async with cluster() as c:
        once = await new_token(c, uses=1)
        await joined_agent(c, "first", once)
        with pytest.raises(Exception, match="used up"):
            await joined_agent(c, "second", once)
        short = await new_token(c, ttl_s=1)
        await asyncio.sleep(1.2)
        with pytest.raises(Exception, match="expired"):
            await joined_agent(c, "late", short)
        real = await new_token(c)
        forged = JoinString(real.token_id, "x" * 32, real.ca_pin)
        with pytest.raises(Exception, match="unknown token"):
            await joined_agent(c, "forger", forged)
        await asyncio.to_thread(c.api.delete_token, real.token_id)
        with pytest.raises(Exception, match="deleted"):
            await joined_agent(c, "after-delete", real)


async def test_an_agent_refuses_a_coordinator_whose_ca_does_not_match_the_pin() -> None:
    async with cluster() as c:
        good = await new_token(c, uses=1)
        stranger_pin = tls.ca_pin(tls.create_ca("a man in the middle").cert_pem)
        with pytest.raises(JoinError, match="man in the middle"):
            await joined_agent(c, "wary", JoinString(good.token_id, good.secret, stranger_pin))
        await joined_agent(c, "wary", good)  # nothing was sent: the one use is still there


async def test_a_removed_host_is_refused_and_its_agent_stops_pulling_work() -> None:
    async with cluster() as c:
        config = await joined_agent(c, "doomed", await new_token(c))
        task = asyncio.create_task(run_agent(config, detect(config)))
        job = await c.submit("commands: ['sleep 300']\nresources: {gpu: 1}")
        await c.wait_for(job.id, "running")
        (host,) = await asyncio.to_thread(c.api.hosts)
        await asyncio.to_thread(c.api.remove_host, host.name, True)  # --force: its job runs
        with pytest.raises(ExceptionGroup) as group:
            await asyncio.wait_for(task, 20)
        assert group.group_contains(Revoked, match="removed")
        assert (await c.job(job.id)).status == "lost"
        assert [h.status for h in await asyncio.to_thread(c.api.hosts)] == ["removed"]


async def test_the_agent_renews_its_certificate_at_two_thirds_of_its_life() -> None:
    settings = Settings(**{**FAST.__dict__, "agent_cert_ttl_s": 6})
    async with cluster(settings) as c:
        config = await joined_agent(c, "renewer", await new_token(c))
        first = (config.pki_dir / "agent.pem").read_bytes()
        task = asyncio.create_task(run_agent(config, detect(config)))
        try:
            async with asyncio.timeout(30):  # renewal is due 4 s into the 6 s life
                while (config.pki_dir / "agent.pem").read_bytes() == first:  # noqa: ASYNC110 - a file, no event
                    await asyncio.sleep(0.5)
            first_end = tls.cert_expiry(first)[1]
            await asyncio.sleep(
                max(0.0, first_end - time.time()) + 1
            )  # work still flows past the first's end
            job = await c.submit("commands: ['echo renewed']\nresources: {gpu: 1}")
            assert await c.full_log(job.id) == b"renewed\n"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_an_expired_certificate_says_the_host_needs_a_new_join_string(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pair = tls.issue_client_cert(tls.create_ca(), "h-1", 60)
    (tmp_path / "agent.pem").write_bytes(pair.cert_pem)
    assert check_not_expired(tmp_path / "agent.pem") > time.time()
    later = time.time() + 3600
    with pytest.raises(CertificateExpired, match="needs a new join string"):
        check_not_expired(tmp_path / "agent.pem", now=later)


async def test_a_client_certificate_cannot_act_as_the_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = tls.create_ca()
    client = tls.issue_client_cert(ca, "localhost", 3600)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "c.pem").write_bytes(client.cert_pem)
    (tmp_path / "c-key.pem").write_bytes(client.key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "c-key.pem")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.client_context(tmp_path / "ca.pem"), server_hostname="localhost"
            )
    finally:
        server.close()


async def test_a_member_sees_only_its_projects_jobs() -> None:
    async with cluster() as c:
        c.start_agent("shared-host", "2xL4")
        tokens = {}
        for project in ("alpha", "beta"):
            await asyncio.to_thread(c.api.create_project, project)
            created = await asyncio.to_thread(
                c.api.create_user, UserCreate(name=f"{project}-dev", project=project)
            )
            tokens[project] = Api(CliConfig(c.coordinator.url, created.token, c.coordinator.pki.ca_cert))
        alpha, beta = tokens["alpha"], tokens["beta"]
        from shared.spec import parse_spec

        job = await asyncio.to_thread(
            alpha.submit, parse_spec("commands: ['echo secret']\nresources: {gpu: 1}")
        )
        await c.full_log(job.id)
        assert [j.id for j in await asyncio.to_thread(alpha.jobs, True)] == [job.id]
        assert await asyncio.to_thread(beta.jobs, True) == []
        for call in (beta.job, beta.stop, lambda ref: beta.logs(ref, 0, False)):
            with pytest.raises(ApiError, match="no job"):
                await asyncio.to_thread(call, job.id)
        with pytest.raises(ApiError, match="admin"):
            await asyncio.to_thread(beta.create_token, TokenCreate(fleet="x"))
        assert [j.id for j in await asyncio.to_thread(c.api.jobs, True)] == [job.id]  # the admin sees all


async def test_a_fleet_limited_to_a_project_takes_only_its_jobs() -> None:
    from shared.wire import FleetLimit

    async with cluster() as c:
        await asyncio.to_thread(c.api.create_project, "research")
        await asyncio.to_thread(c.api.limit_fleet, FleetLimit(name="default", projects=["research"]))
        c.start_agent("reserved", "1xL4")
        await asyncio.sleep(0.5)
        job = await c.submit("commands: [true]\nresources: {gpu: 1}")  # the admin submits to 'default'
        assert job.status == "pending" and "limited to projects research" in job.reason


async def test_enrollment_attempts_are_rate_limited() -> None:
    async with cluster() as c:
        real = await new_token(c)
        statuses = []
        for n in range(15):
            try:
                await joined_agent(
                    c, f"guess-{n}", JoinString(real.token_id, f"wrong-secret-{n:08d}", real.ca_pin)
                )
            except Exception as exc:
                statuses.append(getattr(exc, "status", None))
        assert statuses.count(403) >= 5 and 429 in statuses
