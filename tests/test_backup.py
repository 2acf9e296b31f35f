"""`gpuctl-coordinator backup` and `restore` (SQLite): a backup taken while the coordinator runs and restored
into a new state dir gives a coordinator that shows the job, its log and its files; a restore refuses a
running coordinator's state dir, one that holds anything (unless --force), a backup newer than the code and
an archive that is no backup."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cli.api import Api
from cli.config import CliConfig
from coordinator.backup import MANIFEST, BackupError, backup, restore
from coordinator.migrations import MIGRATIONS
from coordinator.server import ServerConfig, start_coordinator
from coordinator.store import Store
from shared.state_lock import StateDirBusy
from tests.harness import FAST, Cluster, cluster

COORDINATOR = [sys.executable, "-c", "from coordinator.main import main; main()"]
LINES = "for i in $(seq 1 300); do echo line $i; done"


def gpuctl_coordinator(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COORDINATOR, *map(str, args)], capture_output=True, text=True, check=False)


def state_dir(c: Cluster) -> Path:
    return c.coordinator.coordinator.state_dir


async def test_a_backup_taken_while_running_restores_the_job_its_log_and_files(tmp_path: Path) -> None:
    async with cluster() as c:
        c.start_agent("host-b", "1xL4")
        archive_id = await asyncio.to_thread(c.api.upload_files, gzip.compress(b"the job's files"))
        job = await c.submit(f"resources: {{gpu: 1}}\ncommands: ['{LINES}']\n")
        log = await c.full_log(job.id)
        running = await c.submit("commands: ['sleep 600']\n")  # the store keeps changing meanwhile
        await c.wait_for(running.id, "running")
        out = tmp_path / "state.tar.gz"
        made = await asyncio.to_thread(
            gpuctl_coordinator, "backup", out, "--state-dir", state_dir(c), "--config", tmp_path / "none.yaml"
        )
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith(f"backed up {state_dir(c)} to {out}: schema version {len(MIGRATIONS)},")
        assert out.stat().st_mode & 0o777 == 0o600  # it holds the CA key and the secrets key
        token = (state_dir(c) / "admin-token").read_text().strip()
    restored = tmp_path / "restored"
    done = gpuctl_coordinator("restore", out, "--state-dir", restored, "--config", tmp_path / "none.yaml")
    assert done.returncode == 0, done.stderr
    config = ServerConfig(restored, "127.0.0.1", 0, ("localhost", "127.0.0.1"), FAST)
    again = await start_coordinator(config)
    try:
        api = Api(CliConfig(again.url, token, again.pki.ca_cert), timeout_s=30.0)
        assert (await asyncio.to_thread(api.job, job.id)).status == "done"
        chunk = await asyncio.to_thread(api.logs, job.id, 0, False)
        assert chunk.data == log == "".join(f"line {i}\n" for i in range(1, 301)).encode()
        assert chunk.complete
        assert again.coordinator.files.has(archive_id)
        assert (await asyncio.to_thread(api.job, running.id)).status == "running"
    finally:
        await again.close()


async def test_restore_refuses_the_state_dir_of_a_running_coordinator(tmp_path: Path) -> None:
    async with cluster() as c:
        out = tmp_path / "state.tar.gz"
        await asyncio.to_thread(backup, state_dir(c), out)
        refused = await asyncio.to_thread(
            gpuctl_coordinator, "restore", out, "--state-dir", state_dir(c), "--force", "--config", "none"
        )
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.strip() == (
            f"Error: another gpuctl-coordinator (pid {os.getpid()}) is using {state_dir(c)}; stop it first"
        )
        with pytest.raises(StateDirBusy):
            await start_coordinator(ServerConfig(state_dir(c), "127.0.0.1", 0, ("localhost",), FAST))


async def made_backup(tmp_path: Path) -> Path:
    async with cluster() as c:
        await c.submit("commands: [true]\n")
        out = tmp_path / "state.tar.gz"
        await asyncio.to_thread(backup, state_dir(c), out)
    return out


async def test_restore_refuses_a_state_dir_that_holds_anything_unless_forced(tmp_path: Path) -> None:
    out = await made_backup(tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    (target / "coordinator.db").write_bytes(b"someone else's state")
    with pytest.raises(
        BackupError, match=r"target: not empty; restore into an empty state dir, or pass --force"
    ):
        restore(out, target)
    assert (target / "coordinator.db").read_bytes() == b"someone else's state"
    restore(out, target, force=True)
    assert (target / "coordinator.db").read_bytes().startswith(b"SQLite format 3")
    assert (target / "pki" / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def rewritten(source: Path, to: Path, manifest: dict | None) -> Path:
    """The backup `source` with another manifest (None: none at all)."""
    with tarfile.open(source, "r:gz") as old, tarfile.open(to, "w:gz") as new:
        for member in old.getmembers():
            if member.name != MANIFEST:
                new.addfile(member, old.extractfile(member) if member.isfile() else None)
            elif manifest is not None:
                data = json.dumps(manifest).encode()
                member.size = len(data)
                new.addfile(member, io.BytesIO(data))
    return to


async def test_restore_refuses_a_backup_newer_than_the_code_or_no_backup_at_all(tmp_path: Path) -> None:
    out = await made_backup(tmp_path)
    target = tmp_path / "target"
    newer = rewritten(out, tmp_path / "newer.tar.gz", {"format": 1, "schema_version": len(MIGRATIONS) + 1})
    with pytest.raises(
        BackupError, match=rf"its store is at schema version {len(MIGRATIONS) + 1}, newer than"
    ):
        restore(newer, target)
    plain = rewritten(out, tmp_path / "plain.tar.gz", None)
    with pytest.raises(BackupError, match=r"plain.tar.gz: not a gpuctl-coordinator backup"):
        restore(plain, target)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not even gzip")
    with pytest.raises(BackupError, match=r"junk.tar.gz: cannot read the backup"):
        restore(junk, target)
    assert list(target.iterdir()) == [target / "coordinator.lock"]  # nothing of them was unpacked
    restore(out, target)  # the empty state dir takes a good one


def test_a_database_outside_the_state_dir_is_backed_up_and_restored_where_the_config_names_it(
    tmp_path: Path,
) -> None:
    state, db = tmp_path / "state", tmp_path / "db" / "gpuctl.db"
    (state / "logs").mkdir(parents=True)
    (state / "logs" / "a-1.log").write_bytes(b"a log line\n")
    db.parent.mkdir()
    Store(f"sqlite://{db}").close()
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {state}\ndatabase: sqlite://{db}\n")
    made = gpuctl_coordinator("backup", tmp_path / "b.tar.gz", "--config", config)
    assert made.returncode == 0, made.stderr
    moved = tmp_path / "moved"
    config.write_text(f"state_dir: {moved / 'state'}\ndatabase: sqlite://{moved / 'gpuctl.db'}\n")
    done = gpuctl_coordinator("restore", tmp_path / "b.tar.gz", "--config", config)
    assert done.returncode == 0, done.stderr
    assert Store(moved / "gpuctl.db").schema_version == len(MIGRATIONS)
    assert (moved / "state" / "logs" / "a-1.log").read_bytes() == b"a log line\n"
    assert not (moved / "state" / "coordinator.db").exists()


def test_backup_of_a_postgresql_store_points_to_pg_dump(tmp_path: Path) -> None:
    refused = gpuctl_coordinator(
        "backup", tmp_path / "b.tar.gz", "--database", "postgresql://db.example/gpuctl", "--config", "none"
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "Error: database: backup and restore copy SQLite's state; back up PostgreSQL with pg_dump and "
        "pg_restore (README: Backup and restore)"
    )
