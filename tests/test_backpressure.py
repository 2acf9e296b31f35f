"""Backpressure: an overloaded coordinator answers 429 with Retry-After (never a 5xx), a long poll that waits
holds no slot, and a real agent waits at least Retry-After before it tries again; otherwise its waits grow
exponentially with jitter, up to a cap."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest

from coordinator.app import BUSY
from coordinator.busy import BusyGate
from coordinator.limits import BusyLimits
from shared.backoff import Backoff
from tests.agent_session import agent_session, sync_body
from tests.harness import FAST, cluster


def _gate(c: object) -> BusyGate:
    return c.coordinator.runner.app[BUSY]  # type: ignore[attr-defined, no-any-return]


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the coordinator's view, no event to wait on
            await asyncio.sleep(0.02)


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    low = Backoff(0.5, 4.0, uniform=lambda a, b: a)
    high = Backoff(0.5, 4.0, uniform=lambda a, b: b)
    assert [low.delay_s() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [high.delay_s() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    high.reset()
    assert high.delay_s() == 0.5


def test_retry_after_is_a_floor_with_jitter_above_it() -> None:
    assert Backoff(0.5, 30.0, uniform=lambda a, b: a).delay_s(retry_after_s=3.0) == 3.0
    assert Backoff(0.5, 30.0, uniform=lambda a, b: b).delay_s(retry_after_s=3.0) == 4.5
    waits = [Backoff(0.5, 30.0).delay_s(retry_after_s=2.0) for _ in range(200)]
    assert min(waits) >= 2.0 and len(set(waits)) > 100  # spread out, never sooner than asked


async def _stalled_body(release: asyncio.Event) -> AsyncIterator[bytes]:
    """A sync body that arrives only when `release` is set: its request holds a busy slot until then."""
    body = sync_body(None, 10**6)
    yield body[:5]
    await release.wait()
    yield body[5:]


async def test_a_burst_over_the_limit_gets_429_with_retry_after_and_no_5xx() -> None:
    settings = dataclasses.replace(FAST, poll_timeout_s=2.0, busy=BusyLimits(agent=2, retry_after_s=3))
    async with cluster(settings) as c, agent_session(c.coordinator, "h", c.root) as session:
        gate, release = _gate(c), asyncio.Event()

        async def post(data: object) -> tuple[int, str | None, str]:
            async with session.post("/agent/v1/sync", data=data) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.text()

        holders = [asyncio.create_task(post(_stalled_body(release))) for _ in range(2)]
        await _until(lambda: gate.busy["agent"] == 2)
        burst = await asyncio.gather(*(post(sync_body(None, 10**6)) for _ in range(30)))
        assert {(status, retry_after) for status, retry_after, _ in burst} == {(429, "3")}
        assert "the coordinator is busy (agent requests); try again in 3 s" in burst[0][2]
        release.set()
        assert [status for status, _, _ in await asyncio.gather(*holders)] == [200, 200]
        # waiting long polls hold no slot: three at once wait side by side, past a limit of two
        idle = msgspec.json.encode(
            {"agent_version": "0.1.0", "inventory_generation": "", "desired_index": 10**6}
        )
        waiting = [asyncio.create_task(post(idle)) for _ in range(3)]
        answers = await asyncio.gather(*waiting)
        assert [status for status, _, _ in answers] == [200, 200, 200], answers
        assert gate.busy["agent"] == 0


async def test_a_real_agent_waits_at_least_retry_after_between_tries() -> None:
    settings = dataclasses.replace(FAST, busy=BusyLimits(agent=0, retry_after_s=1))
    async with cluster(settings) as c:
        gate = _gate(c)
        c.start_agent("host-b", "1xL4")
        await _until(lambda: sum(1 for _, kind, who in gate.refusals if who == "host-b") >= 4)
        tries = [at for at, kind, who in gate.refusals if kind == "agent" and who == "host-b"]
        gaps = [later - earlier for earlier, later in zip(tries, tries[1:], strict=False)]
        assert min(gaps) >= 1.0, gaps
        gate.limits = BusyLimits()  # the load is gone: the same agent gets through and runs work
        job = await c.submit("commands: ['echo through']\nresources: {gpu: 1}\n")
        assert await c.full_log(job.id) == b"through\n"


@pytest.mark.parametrize("path", ["/healthz", "/agent/v1/ca"])
async def test_health_checks_and_the_ca_are_never_refused(path: str) -> None:
    settings = dataclasses.replace(FAST, busy=BusyLimits(agent=0, logs=0, user=0))
    async with cluster(settings) as c, agent_session(c.coordinator, "h", c.root) as session:
        async with session.get(path) as resp:
            assert resp.status == 200
        async with session.post("/agent/v1/sync", data=sync_body(None)) as resp:
            assert resp.status == 429
