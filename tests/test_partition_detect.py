"""A silent partition (no reset, no answer) is noticed within the long poll's read deadline, and every sync
failure is logged with its reason, never an empty one."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket

import aiohttp
import pytest

from agent.agent import detect, run_agent
from agent.keepalive import keepalive_socket
from agent.sync import failure_reason, read_deadline_s
from shared import constants as C
from shared.aio import cancel_and_wait
from shared.errors import reason_of
from tests.harness import cluster


def test_the_read_deadline_is_under_two_poll_intervals() -> None:
    assert read_deadline_s(30.0) == pytest.approx(38.0)
    assert read_deadline_s(30.0) < 2 * 30.0


def test_no_failure_is_logged_without_a_reason() -> None:
    assert failure_reason(TimeoutError(), 38.0) == "no answer in 38 s (coordinator unreachable?)"
    assert failure_reason(aiohttp.ServerTimeoutError(), 38.0).startswith("no answer in 38 s")
    assert reason_of(ConnectionResetError()) == "ConnectionResetError"
    assert reason_of(aiohttp.ServerDisconnectedError()) != ""
    assert reason_of(ValueError("two\nlines")) == "two lines"


def test_agent_sockets_carry_tcp_keepalive() -> None:
    info = (socket.AF_INET, socket.SOCK_STREAM, 0, "", ("127.0.0.1", 0))
    with keepalive_socket(info) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) <= 30


async def test_an_agent_facing_a_silent_coordinator_says_so_within_its_deadline(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener that accepts and then never answers: what a partition looks like from the agent."""
    caplog.set_level(logging.WARNING, logger="gpuctl.agent")
    monkeypatch.setattr(C, "POLL_TIMEOUT_S", 1.0)
    monkeypatch.setattr(C, "SYNC_READ_MARGIN_S", 1.0)
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep it open, say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with cluster() as c:
        config = dataclasses.replace(c.agent_config("cut", "1xL4"), coordinator=f"https://localhost:{port}")
        agent = asyncio.create_task(run_agent(config, detect(config)))
        try:
            async with asyncio.timeout(30):
                while not any("sync failed" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            await cancel_and_wait(agent)
            server.close()
            for writer in held:
                writer.close()
    line = next(r.getMessage() for r in caplog.records if "sync failed" in r.getMessage())
    assert line.startswith("sync failed: no answer in 2 s (coordinator unreachable?); retrying in "), line
