"""Version skew: every agent request names its protocol version; a coordinator serves its own major and a minor
within one (a rolling upgrade never stops a fleet) and refuses the rest with both versions named, in the
agent's log and on the host in `gpuctl hosts`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import pytest

from coordinator.service import Settings
from shared import constants as C
from shared.protocol import refusal
from tests.agent_session import agent_session, sync_body
from tests.harness import FAST, Cluster, cluster

JOB = "commands: ['echo hello']\nresources: {gpu: 1}\n"


def speaking(version: str) -> Settings:
    return dataclasses.replace(FAST, poll_timeout_s=1.0, protocol_version=version)


@pytest.mark.parametrize(
    ("coordinator", "agent", "served"),
    [
        ("1.0", "1.0", True),
        ("1.1", "1.0", True),
        ("1.1", "1.2", True),
        ("1.0", "1.2", False),
        ("1.3", "1.1", False),
        ("2.0", "1.0", False),
        ("1.0", "2.0", False),
        ("1.0", "one", False),
    ],
)
def test_one_minor_version_apart_is_served(coordinator: str, agent: str, served: bool) -> None:
    assert (refusal(coordinator, agent) is None) == served


def test_a_refusal_names_both_versions_and_the_side_to_upgrade() -> None:
    assert refusal("2.0", "1.0") == (
        "agent speaks protocol 1.0, coordinator speaks 2.0 (it serves 2.0 to 2.1): upgrade the agent"
    )
    assert refusal("1.0", "2.1") == (
        "agent speaks protocol 2.1, coordinator speaks 1.0 (it serves 1.0 to 1.1): upgrade the coordinator"
    )


async def _hosts(c: Cluster) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {h.name: (h.status, h.warnings) for h in await asyncio.to_thread(c.api.hosts)}


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the coordinator's view, no event to wait on
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("coordinator", "agent"),
    [("1.0", "1.0"), ("1.1", "1.0"), ("1.0", "1.1"), ("2.1", "2.0")],
    ids=["same", "older", "newer", "major-2"],
)
async def test_a_real_agent_one_minor_apart_runs_jobs(
    coordinator: str, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(C, "PROTOCOL_VERSION", agent)  # the agent's side; the coordinator's is in Settings
    async with cluster(speaking(coordinator)) as c:
        c.start_agent("host-a", "1xL4")
        job = await c.submit(JOB)
        assert (await c.full_log(job.id)) == b"hello\n"
        assert (await c.job(job.id)).status == "done"
        assert (await _hosts(c))["host-a"] == ("ready", ())


async def test_a_major_version_apart_is_refused_in_the_agents_log_and_in_hosts(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="gpuctl.agent")
    expected = "agent speaks protocol 1.0, coordinator speaks 2.0 (it serves 2.0 to 2.1): upgrade the agent"
    async with cluster(speaking("2.0")) as c:
        monkeypatch.setattr(C, "PROTOCOL_VERSION", "2.0")  # served: the host is seen and ready
        c.start_agent("old", "1xL4")
        await _until(lambda: "old" in c.coordinator.coordinator.last_seen)
        await c.stop_agent("old")
        monkeypatch.setattr(C, "PROTOCOL_VERSION", "1.0")  # the same host, downgraded out of range
        c.start_agent("old", "1xL4")
        agent_lines = lambda: [r.getMessage() for r in caplog.records if r.name == "gpuctl.agent"]  # noqa: E731
        await _until(lambda: any(expected in line for line in agent_lines()))
        line = next(line for line in agent_lines() if expected in line)
        assert line.startswith("sync failed: coordinator answered 426: " + expected), line
        hosts = await _hosts(c)
        assert hosts["old"][1] == ("refused: " + expected,), hosts
        job = await c.submit(JOB)
        await asyncio.sleep(1.0)  # a scheduling pass or two: nothing may land on the refused host
        assert (await c.job(job.id)).status == "pending"
        assert not c.agents["old"].done(), "a refused agent keeps its jobs and tries again later"


async def test_the_refusal_is_one_json_line_and_an_upgrade_clears_it() -> None:
    async with cluster(speaking("1.0")) as c, agent_session(c.coordinator, "h", c.root) as session:
        headers = {C.PROTOCOL_HEADER: "3.7"}
        async with session.post("/agent/v1/sync", data=sync_body(None), headers=headers) as resp:
            answer = await resp.json()
        assert resp.status == 426
        assert resp.headers[C.PROTOCOL_HEADER] == "1.0"
        assert answer == {
            "error": "agent speaks protocol 3.7, coordinator speaks 1.0 (it serves 1.0 to 1.1): "
            "upgrade the coordinator",
            "field": C.PROTOCOL_HEADER,
        }
        assert (await _hosts(c))["h"][1] == ("refused: " + answer["error"],)
        for version in ("1.1", None):  # one minor ahead; no header at all is 1.0
            headers = {C.PROTOCOL_HEADER: version} if version else {}
            async with session.post("/agent/v1/sync", data=sync_body(None, 10**6), headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        assert (await _hosts(c))["h"][1] == ()
