"""Integers past what the store or a file can hold are a 400 naming the field, not a 500; aiohttp's own
refusals (a body over the limit, a wrong method) answer in the API's JSON error shape too."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp

from shared import constants as C
from shared import tls
from tests.agent_session import agent_session, sync_body
from tests.harness import Cluster, cluster
from tests.test_fuzz import NO_WAIT
from tests.test_inventory_guard import SOUND


def _user(c: Cluster) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=c.coordinator.url,
        connector=aiohttp.TCPConnector(ssl=tls.client_context(c.coordinator.pki.ca_cert)),
        headers={"Authorization": f"Bearer {c.api.config.token}"},
    )


async def _answer(resp: aiohttp.ClientResponse) -> tuple[int, dict[str, Any]]:
    return resp.status, json.loads(await resp.read())


async def test_huge_integers_are_refused_with_the_field() -> None:
    async with cluster(NO_WAIT) as c, _user(c) as user, agent_session(c.coordinator, "h1", c.root) as agent:
        async with user.post("/api/v1/tokens", json={"fleet": "dc1", "uses": 2**63}) as resp:
            status, answer = await _answer(resp)
        assert (status, answer["field"]) == (400, "uses"), answer
        async with agent.post("/agent/v1/sync", data=sync_body(SOUND)) as resp:
            assert resp.status == 200
        job = await c.submit("type: task\ncommands: [sleep 1]\nresources: {gpu: H100:1}\n")
        for name in ("exit_code", "log_size"):
            report = {"id": job.allocation_id, "state": "exited", "exit_code": 0, name: 2**63}
            body = {**json.loads(sync_body(SOUND)), "allocations": [report]}
            async with agent.post("/agent/v1/sync", json=body) as resp:
                status, answer = await _answer(resp)
            assert (status, answer["field"]) == (400, f"allocations[0].{name}"), answer
        async with user.get(f"/api/v1/jobs/{job.id}/logs", params={"offset": str(2**44)}) as resp:
            status, answer = await _answer(resp)
        assert (status, answer["field"]) == (400, "offset"), answer
        async with agent.post(f"/agent/v1/allocations/{job.allocation_id}/logs?offset={2**44}") as resp:
            status, answer = await _answer(resp)
        assert (status, answer["field"]) == (400, "offset"), answer


async def test_aiohttps_own_refusals_are_json() -> None:
    async with cluster(NO_WAIT) as c, _user(c) as user:
        async with user.post("/api/v1/jobs", data=io.BytesIO(b"x" * (C.MAX_REQUEST_BYTES + 1))) as resp:
            status, answer = await _answer(resp)
        assert status == 413 and "body size" in answer["error"], answer
        async with user.put("/api/v1/jobs") as resp:
            status, answer = await _answer(resp)
        assert (status, answer["error"]) == (405, "Method Not Allowed") and "POST" in resp.headers["Allow"]
