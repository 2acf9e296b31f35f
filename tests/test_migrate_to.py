"""`gpuctl-coordinator migrate --to postgresql://...`: an SQLite coordinator's jobs, logs, archives, hosts and
counters move into PostgreSQL; a coordinator started there serves them and goes on numbering after them. The
copy refuses a running coordinator and a database that is not empty."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.migrate_to import MigrateError, migrate_to
from coordinator.server import ServerConfig, start_coordinator
from shared.state_lock import StateDirBusy
from tests.harness import FAST, Cluster, cluster
from tests.test_files_e2e import project, submit_file

COORDINATOR = [sys.executable, "-c", "from coordinator.main import main; main()"]


def gpuctl_coordinator(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COORDINATOR, *map(str, args)], capture_output=True, text=True, check=False)


def seq_of(c: Cluster, job_id: str) -> int:
    job = c.coordinator.coordinator.store.get_job(job_id)
    assert job is not None
    return job.seq


async def test_a_job_and_its_log_are_there_after_moving_to_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    async with cluster() as c:
        c.start_agent("host-m", "1xL4")
        job = await c.submit("resources: {gpu: 1}\ncommands: ['seq 1 500']\n")
        log = await c.full_log(job.id)
        with_files = await submit_file(c, project(tmp_path))
        files_log = await c.full_log(with_files)
        await c.stop_agent("host-m")
        state_dir, port = c.coordinator.coordinator.state_dir, c.coordinator.port
        last_seq = seq_of(c, with_files)
        await c.coordinator.close()
        moved = await asyncio.to_thread(
            gpuctl_coordinator, "migrate", "--to", postgres_url, "--state-dir", state_dir, "--config", "none"
        )
        assert moved.returncode == 0, moved.stderr
        assert f"{len(log) + len(files_log)} log bytes and 1 file archives" in moved.stdout
        shutil.rmtree(state_dir / "logs")  # from here on, they are read from the database
        shutil.rmtree(state_dir / "files")
        config = ServerConfig(state_dir, "127.0.0.1", port, ("localhost",), FAST, database=postgres_url)
        c.coordinator = await start_coordinator(config)
        assert c.coordinator.coordinator.store.kind == "postgresql"
        assert (await c.job(job.id)).status == "done"
        assert await c.full_log(job.id) == log == "".join(f"{n}\n" for n in range(1, 501)).encode()
        assert await c.full_log(with_files) == files_log
        c.start_agent("host-m", "1xL4")  # its certificate and host row came along
        again = await c.submit("resources: {gpu: 1}\ncommands: ['echo after the move']\n")
        assert await c.full_log(again.id) == b"after the move\n"
        assert seq_of(c, again.id) > last_seq  # numbered after the copied jobs


async def test_the_copy_refuses_a_running_coordinator_and_a_database_in_use(postgres_url: str) -> None:
    async with cluster() as c:
        await c.submit("commands: [true]\n")
        state_dir, db = c.coordinator.coordinator.state_dir, c.coordinator.coordinator.store.path
        assert db is not None
        with pytest.raises(StateDirBusy, match="another gpuctl-coordinator"):
            migrate_to(state_dir, db, postgres_url)
        await c.coordinator.close()
        assert migrate_to(state_dir, db, postgres_url).rows > 0
        with pytest.raises(
            MigrateError, match=r"is not empty \(table jobs has rows\); give an empty database"
        ):
            migrate_to(state_dir, db, postgres_url)
        refused = gpuctl_coordinator(
            "migrate", "--to", "sqlite:///elsewhere.db", "--state-dir", state_dir, "--config", "none"
        )
        assert refused.returncode == 1
        assert (
            refused.stderr.strip() == "Error: --to: expected postgresql://..., got 'sqlite:///elsewhere.db'"
        )
        c.coordinator = await start_coordinator(ServerConfig(state_dir, "127.0.0.1", 0, ("localhost",), FAST))
