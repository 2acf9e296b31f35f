"""Short leases for tests of lost hosts: unreachable after 1 s, lost after 3 s."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from shared.wire import JobView
from tests.harness import FAST, Cluster

SHORT_LEASES = dataclasses.replace(FAST, unreachable_after_s=1.0, lost_after_s=3.0)


def shared_dir(c: Cluster) -> Path:
    """A folder every job user may write (jobs run as unprivileged users)."""
    path = c.root / "shared"
    path.mkdir(mode=0o777, exist_ok=True)
    path.chmod(0o777)
    return path


async def host_status(c: Cluster, name: str) -> str:
    hosts = await asyncio.to_thread(c.api.hosts)
    return next(h.status for h in hosts if h.name == name)


async def wait_host(c: Cluster, name: str, status: str, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await host_status(c, name) == status:
                return
            await asyncio.sleep(0.1)


async def wait_stopped(alloc_dir: Path, timeout_s: float) -> None:
    """Until the allocation's supervisor saw its job end (or the agent forgot it, once done)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if not alloc_dir.exists() or (alloc_dir / "exit.json").exists():
                return
            await asyncio.sleep(0.1)


async def wait_attempt(c: Cluster, ref: str, attempt: int, status: str, timeout_s: float = 20.0) -> JobView:
    async with asyncio.timeout(timeout_s):
        while True:
            view = await c.job(ref)
            if (view.attempt, view.status) == (attempt, status):
                return view
            await asyncio.sleep(0.1)
