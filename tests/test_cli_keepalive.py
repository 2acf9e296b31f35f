"""The CLI's client keeps its TLS connection between the requests of one run (submit, then the job's log),
against a real coordinator, and opens a new one when the coordinator has closed the idle one."""

from __future__ import annotations

import asyncio
import shutil

from cli.api import Api
from cli.config import CliConfig
from coordinator.limits import ConnectionLimits
from coordinator.server import ServerConfig, ensure_admin_token, start_coordinator
from shared.spec import parse_spec
from tests.harness import FAST, cluster, reachable_tmpdir

SPEC = parse_spec("commands: ['true']")


async def test_the_requests_of_one_client_share_one_connection() -> None:
    async with cluster() as c:
        client = Api(c.api.config)

        job = await asyncio.to_thread(client.submit, SPEC)
        await asyncio.to_thread(client.job, job.id)
        await asyncio.to_thread(client.logs, job.id, 0, False)
        await asyncio.to_thread(client.jobs, True)

        assert client.connections_opened == 1


async def test_a_connection_the_coordinator_closed_is_opened_again() -> None:
    root = reachable_tmpdir()
    limits = ConnectionLimits(keepalive_timeout_s=0.1)
    running = await start_coordinator(ServerConfig(root / "c", "127.0.0.1", 0, ("localhost",), FAST, limits))
    try:
        token = ensure_admin_token(running.coordinator.store, root / "admin-token")
        client = Api(CliConfig(running.url, token, running.pki.ca_cert))
        await asyncio.to_thread(client.jobs, False)
        await asyncio.sleep(1.0)  # ten keep-alive timeouts: the coordinator has closed the idle connection

        job = await asyncio.to_thread(client.submit, SPEC)  # a POST: never sent twice, so it must not fail

        assert job.status == "pending" and client.connections_opened == 2
    finally:
        await running.close()
        shutil.rmtree(root, ignore_errors=True)
