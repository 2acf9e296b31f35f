"""Readiness for systemd's Type=notify units: READY=1 reaches $NOTIFY_SOCKET only when the daemon is really
ready (the coordinator listens; the agent's first sync went through), and never before."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.agent import detect, run_agent
from shared.sdnotify import notify
from tests.harness import cluster


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_notify_sends_the_state_and_is_silent_without_systemd(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert notify("READY=1")
    assert notify_socket.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"gpuctl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert sock.recv(64) == b"READY=1"


def test_the_coordinator_is_ready_once_it_listens(tmp_path: Path, notify_socket: socket.socket) -> None:
    port = _free_port()
    command = [sys.executable, "-c", "from coordinator.main import main; main()", "run"]
    command += ["--config", str(tmp_path / "none.yaml"), "--state-dir", str(tmp_path / "state")]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notify_socket.settimeout(30)
        assert notify_socket.recv(64) == b"READY=1"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening when it said so
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_the_agent_is_ready_after_its_first_sync_not_before(notify_socket: socket.socket) -> None:
    notify_socket.setblocking(False)
    loop = asyncio.get_running_loop()
    async with cluster() as c:
        # A coordinator that does not answer: the agent keeps trying and never says it is ready.
        config = c.agent_config("lonely", "1xH100:80GB")
        silent = dataclasses.replace(config, coordinator=f"https://127.0.0.1:{_free_port()}")
        task = asyncio.create_task(run_agent(silent, detect(silent)))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(notify_socket, 64), timeout=2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        c.start_agent("host-a", "1xH100:80GB")
        started = time.monotonic()
        assert await asyncio.wait_for(loop.sock_recv(notify_socket, 64), timeout=60) == b"READY=1"
        hosts = await asyncio.to_thread(c.api.hosts)
        assert [h.name for h in hosts] == ["host-a"], (
            f"ready {time.monotonic() - started:.1f}s in, hosts {hosts}"
        )
