"""A real coordinator (real TLS, temporary SQLite or a given PostgreSQL) and real agents, in-process, for
integration tests."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.agent import detect, run_agent
from agent.config import AgentConfig
from agent.runtime.cgroups import Cgroups
from agent.runtime.process import ProcessRuntime
from cli.api import Api, LogChunk
from cli.config import CliConfig
from coordinator.pki import issue_agent_cert
from coordinator.server import RunningCoordinator, ServerConfig, ensure_admin_token, start_coordinator
from coordinator.service import Settings
from shared.aio import cancel_and_wait
from shared.spec import TaskSpec, parse_spec
from shared.wire import JobView
from tests.real_parts import worker_index

FAST = Settings(poll_timeout_s=5.0, sync_interval_s=0.05, unreachable_after_s=30.0, retry_delay_s=0.5)


def ssh_ports_of_this_worker() -> int:
    """The first sshd port of this test worker's coordinators: tests on other workers run their own
    coordinators on this machine at the same time, and two that picked the same port for their jobs' sshds
    on one loopback would reach each other's (one pytest-xdist worker runs its tests one at a time)."""
    return 20000 + 1000 * worker_index()


def reachable_tmpdir() -> Path:
    """A temporary folder that the unprivileged job user can enter (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix="gpuctl-test-"))
    path.chmod(0o755)
    return path


@dataclass
class Cluster:
    root: Path
    coordinator: RunningCoordinator
    api: Api
    agents: dict[str, asyncio.Task[None]]

    def agent_config(
        self, name: str, simulate: str | None, blocks: str | int = "auto", **extra: Any
    ) -> AgentConfig:
        """`extra`: more AgentConfig fields (docker=DockerConfig(...), simulate_cpus=1, coordinator=(URL, ...))."""
        pki = self.coordinator.pki
        cert, key = issue_agent_cert(pki, name, self.root / name / "pki")
        extra.setdefault("coordinator", self.coordinator.url)
        return AgentConfig(
            state_dir=self.root / name,
            name=name,
            blocks=blocks,
            simulate=simulate,
            ca_file=pki.ca_cert,
            cert_file=cert,
            key_file=key,
            stop_grace_s=2.0,
            **extra,
        )

    def start_agent(
        self, name: str, simulate: str | None = "8xH100:80GB", blocks: str | int = "auto", **extra: Any
    ) -> AgentConfig:
        config = self.agent_config(name, simulate, blocks, **extra)
        self.agents[name] = asyncio.create_task(run_agent(config, detect(config)), name=f"agent-{name}")
        return config

    async def stop_agent(self, name: str) -> None:
        task = self.agents.pop(name)
        await cancel_and_wait(task)
        if not task.cancelled() and (error := task.exception()) is not None:  # it had died: the test fails
            raise error

    async def restart_coordinator(self, settings: Settings = FAST) -> None:
        """Stop the coordinator and start another on the same state, database and port."""
        port, database = self.coordinator.port, self.coordinator.coordinator.store.database_url
        await self.coordinator.close()
        self.coordinator = await start_coordinator(
            ServerConfig(
                self.root / "coordinator",
                "127.0.0.1",
                port,
                ("localhost", "127.0.0.1"),
                settings,
                database=database,
            )
        )

    async def submit(self, yaml_text: str) -> JobView:
        spec = parse_spec(yaml_text, environ=os.environ)
        return await asyncio.to_thread(self.api.submit, spec)

    async def submit_spec(self, spec: TaskSpec) -> JobView:
        return await asyncio.to_thread(self.api.submit, spec)

    async def job(self, ref: str) -> JobView:
        return await asyncio.to_thread(self.api.job, ref)

    async def wait_for(self, ref: str, *states: str, timeout_s: float = 60.0) -> JobView:
        async with asyncio.timeout(timeout_s):
            while True:
                job = await self.job(ref)
                if job.status in states:
                    return job
                await asyncio.sleep(0.1)

    async def full_log(self, ref: str, timeout_s: float = 60.0) -> bytes:
        """Follow the job's log to its end, as `gpuctl logs -f` does."""
        out, offset = b"", 0
        async with asyncio.timeout(timeout_s):
            while True:
                chunk: LogChunk = await asyncio.to_thread(self.api.logs, ref, offset, True)
                out += chunk.data
                offset = chunk.next_offset
                if chunk.complete:
                    return out


def postgres_by_default() -> str:
    """A new PostgreSQL database's URL when the environment asks every cluster for one
    (`GPUCTL_TEST_POSTGRES=1 pytest tests/test_e2e.py`: the integration tests on PostgreSQL), else ""."""
    if not os.environ.get("GPUCTL_TEST_POSTGRES"):
        return ""
    global _POSTGRES
    if _POSTGRES is None:
        from tests.postgres import running_postgres

        _POSTGRES = _EXIT.enter_context(running_postgres())
    return _POSTGRES.create_database()


_POSTGRES: Any = None  # this process's server, when GPUCTL_TEST_POSTGRES is set
_EXIT = contextlib.ExitStack()  # stops it as the process ends
atexit.register(_EXIT.close)


@contextlib.asynccontextmanager
async def cluster(settings: Settings = FAST, database: str = "") -> AsyncIterator[Cluster]:
    """`database`: the coordinator's store (a URL); SQLite under its state dir when empty, unless the
    environment asks for PostgreSQL (`postgres_by_default`)."""
    database = database or postgres_by_default()
    root = reachable_tmpdir()
    settings = replace(settings, job_ssh_port_first=ssh_ports_of_this_worker())
    running = await start_coordinator(
        ServerConfig(
            root / "coordinator", "127.0.0.1", 0, ("localhost", "127.0.0.1"), settings, database=database
        )
    )
    token = ensure_admin_token(running.coordinator.store, root / "coordinator" / "admin-token")
    api = Api(CliConfig(running.url, token, running.pki.ca_cert), timeout_s=30.0)
    c = Cluster(root, running, api, {})
    try:
        yield c
    finally:
        for name in list(c.agents):
            await c.stop_agent(name)
        await c.coordinator.close()  # the one running now: a test may have restarted it
        kill_leftover_jobs(root)
        shutil.rmtree(root, ignore_errors=True)


def kill_leftover_jobs(root: Path) -> None:
    """Jobs outlive their agent by design (it re-adopts them); a test must not leave them behind."""
    runtime = ProcessRuntime(None, cgroups=Cgroups() if os.geteuid() == 0 else None)
    for alloc_dir in root.glob("*/allocs/*"):
        runtime.signal_stop(alloc_dir, kill=True)
        runtime.release(alloc_dir)  # its cgroups: whatever is left in them dies
    if runtime.cgroups is not None:
        for controller in runtime.cgroups.controllers:  # the parent goes too, unless another test uses it
            with contextlib.suppress(OSError):
                (runtime.cgroups.root / controller / runtime.cgroups.parent).rmdir()


async def child_pid(alloc_dir: Path) -> int:
    """The pid of a plain-process job (its supervisor writes `child.pid`), once it has started."""
    async with asyncio.timeout(10):
        while True:
            try:
                return int((alloc_dir / "child.pid").read_text())
            except (FileNotFoundError, ValueError):
                await asyncio.sleep(0.05)
