"""Security paths that a second check could hide: each test sets up the case where only the guarded check
refuses, against the real coordinator over real TLS, with agents' real client certificates."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from agent.agent import detect
from agent.client import ApiError, CoordinatorClient
from agent.config import AgentConfig
from agent.identity import join
from shared import tls
from shared.join import parse_join_string
from shared.spec import REDACTED, parse_spec
from shared.wire import ErrorBody, SubmitRequest, SyncRequest, SyncResponse, TokenCreate
from tests.harness import Cluster, cluster

PASSWORD = "pull-secret-8d1f"


def _user_call(c: Cluster, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """A user API call with the admin token; answers the status and the raw body."""
    context = tls.client_context(c.coordinator.pki.ca_cert)
    conn = http.client.HTTPSConnection("localhost", c.coordinator.port, context=context, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {c.api.config.token}", "Content-Type": "application/json"}
        conn.request(method, "/api/v1" + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@asynccontextmanager
async def _agent_client(c: Cluster, pki_dir: Path) -> AsyncIterator[CoordinatorClient]:
    """The agent's own HTTPS client, presenting the certificate under `pki_dir`."""
    context = tls.client_context(c.coordinator.pki.ca_cert, pki_dir / "agent.pem", pki_dir / "agent-key.pem")
    client = CoordinatorClient(c.coordinator.url, context)
    try:
        yield client
    finally:
        await client.close()


async def _enrolled(c: Cluster, name: str) -> tuple[AgentConfig, str]:
    """A host that joined with a join string (so its certificate's serial is on record): config, host id."""
    created = await asyncio.to_thread(c.api.create_token, TokenCreate(fleet="default"))
    config = AgentConfig(coordinator=c.coordinator.url, state_dir=c.root / name, name=name, simulate="1xL4")
    host_id = await join(config.coordinator, parse_join_string(created.join_string), config.pki_dir, name)
    return config, host_id


async def _sync(client: CoordinatorClient, config: AgentConfig, **inventory: object) -> SyncResponse:
    inv = msgspec.structs.replace(detect(config), **inventory)
    return await client.sync(SyncRequest(agent_version="test", inventory_generation="", inventory=inv), 10)


async def test_an_agent_cannot_write_the_log_of_another_hosts_allocation() -> None:
    async with cluster() as c:
        a = c.start_agent("host-a", "1xL4")
        job = await c.submit("commands: ['echo mine']\nresources: {gpu: 1}")
        assert await c.full_log(job.id) == b"mine\n"
        alloc_id = (await c.job(job.id)).allocation_id
        assert alloc_id is not None
        b = c.start_agent("host-b", "1xL4")
        async with _agent_client(c, b.pki_dir) as as_b, _agent_client(c, a.pki_dir) as as_a:
            for offset, forged in ((0, b"mine\nforged by b\n"), (5, b"forged by b\n")):
                with pytest.raises(ApiError) as refused:
                    await as_b.post_log(alloc_id, offset, forged)
                assert refused.value.status == 404 and "on this host" in str(refused.value)
            assert await as_a.post_log(alloc_id, 0, b"mine\n") == 5  # its own host's call is answered
        assert await c.full_log(job.id) == b"mine\n"


@pytest.mark.parametrize(
    ("spec", "name", "where"),
    [
        ('{"commands": ["true"], "bogus": 1}', "bogus", "spec"),
        ('{"commands": ["true"], "resources": {"tpu": 1}}', "tpu", "spec.resources"),
        (
            '{"commands": ["true"], "registry_auth": {"username": "u", "password": "p", "token": "t"}}',
            "token",
            "spec.registry_auth",
        ),
    ],
)
async def test_an_unknown_spec_field_from_the_api_is_refused_and_no_job_is_made(
    spec: str, name: str, where: str
) -> None:
    """The CLI parses YAML first; a client that posts JSON straight to the API meets the same strictness."""
    async with cluster() as c:
        body = ('{"spec": ' + spec + "}").encode()
        status, answer = await asyncio.to_thread(_user_call, c, "POST", "/jobs", body)
        assert status == 400, answer
        refusal = msgspec.json.decode(answer, type=ErrorBody)
        assert f"unknown field `{name}`" in refusal.error and refusal.field.startswith(where), refusal
        assert await asyncio.to_thread(c.api.jobs, True) == []


async def test_a_revoked_certificate_is_refused_while_its_host_is_still_ready() -> None:
    async with cluster() as c:
        config, host_id = await _enrolled(c, "leaky")
        async with _agent_client(c, config.pki_dir) as client:
            await _sync(client, config)
            coord = c.coordinator.coordinator
            assert coord.accounts.revoke_host(host_id) == 1  # its key leaked; the host is not removed
            host = coord.store.get_host(host_id)
            assert host is not None and host.status == "ready"  # so only the revoked serial refuses it
            with pytest.raises(ApiError) as refused:
                await _sync(client, config)
            assert refused.value.status == 403 and "revoked" in str(refused.value)
            with pytest.raises(ApiError) as refused:
                await client.post_log("a-1", 0, b"x")
            assert refused.value.status == 403


async def test_a_revoked_certificate_stays_refused_after_a_coordinator_restart() -> None:
    async with cluster() as c:
        revoked, revoked_host = await _enrolled(c, "leaky")
        kept, _ = await _enrolled(c, "trusted")
        c.coordinator.coordinator.accounts.revoke_host(revoked_host)
        await c.restart_coordinator()
        host = c.coordinator.coordinator.store.get_host(revoked_host)
        assert host is not None and host.status == "ready"
        async with _agent_client(c, revoked.pki_dir) as client:
            with pytest.raises(ApiError) as refused:
                await _sync(client, revoked)
            assert refused.value.status == 403
        async with _agent_client(c, kept.pki_dir) as client:
            assert (await _sync(client, kept)).host_id != revoked_host  # the restarted one serves agents


async def test_the_registry_password_reaches_only_the_agent_that_runs_the_job() -> None:
    async with cluster() as c:
        spec = parse_spec(
            "image: mirror.dc1:5000/team/app:1\ncommands: [true]\n"
            f"registry_auth: {{username: puller, password: {PASSWORD}}}"
        )
        status, submitted = await asyncio.to_thread(
            _user_call, c, "POST", "/jobs", msgspec.json.encode(SubmitRequest(spec=spec))
        )
        assert status == 201, submitted
        job_id = msgspec.json.decode(submitted)["id"]
        config, _ = await _enrolled(c, "docker-host")
        async with _agent_client(c, config.pki_dir) as client:
            async with asyncio.timeout(20):  # it only advertises Docker: no engine is needed to be placed
                answer = await _sync(client, config, runtimes=("process", "docker"))
                while not answer.allocations:
                    answer = await client.sync(
                        SyncRequest(
                            agent_version="test",
                            inventory_generation=answer.inventory_generation,
                            desired_index=answer.index,
                        ),
                        10,
                    )
        (alloc,) = answer.allocations
        assert alloc.job_id == job_id and alloc.spec.registry_auth is not None
        assert alloc.spec.registry_auth.password == PASSWORD
        views = [submitted]
        for path in (f"/jobs/{job_id}", "/jobs?all=1", "/jobs"):
            status, view = await asyncio.to_thread(_user_call, c, "GET", path)
            assert status == 200, view
            views.append(view)
        for view in views:
            assert PASSWORD.encode() not in view and REDACTED.encode() in view and b"puller" in view, view
        assert (await c.job(job_id)).host == "docker-host"  # the views above were of the placed job
