"""The coordinator's store (coordinator/store.py), on SQLite and on PostgreSQL: schema, durability across a
restart, transitions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent.blocks import make_blocks
from coordinator.accounts import Accounts, hash_secret
from coordinator.store import MIGRATIONS, JobRow, Store
from shared.spec import parse_spec
from shared.states import AllocState, InvalidTransition, JobState
from shared.wire import GpuDevice, Inventory, generation_of

SPEC_TEXT = """\
type: task
name: train
image: nvcr.io/nvidia/pytorch:24.08-py3
commands: [python train.py]
env: {HF_HOME: /data/hf}
resources: {gpu: H100:80GB:2, cpu: 8.., memory: 64GB..}
priority: 50
"""


def inventory() -> Inventory:
    gpus = tuple(
        GpuDevice(index=i, vendor="nvidia", name="H100", memory_mib=81559, uuid=f"GPU-{i}") for i in range(8)
    )
    return Inventory(
        hostname="dgx1",
        cpu_count=64,
        memory_mib=2048 * 1024,
        disk_mib=8000 * 1024,
        gpus=gpus,
        blocks=make_blocks(gpus, range(64), 2048 * 1024, 8000 * 1024, "auto"),
        runtimes=("process", "docker"),
    )


@pytest.fixture
def store(database: Path | str) -> Iterator[Store]:
    s = Store(database)
    yield s
    s.close()


def move(store: Store, job_id: str, *states: JobState) -> JobRow:
    """Walk a job through `states`, one committed transaction each, as the coordinator does."""
    for state in states:
        job = store.get_job(job_id)
        assert job is not None
        with store.tx() as db:
            store.set_job_state(db, job, state)
    job = store.get_job(job_id)
    assert job is not None
    return job


# --- schema --------------------------------------------------------------------------------------------------


def test_a_fresh_store_migrates_to_the_latest_version(store: Store) -> None:
    assert store.schema_version == len(MIGRATIONS)
    for table in ("hosts", "jobs", "allocations", "tokens", "audit", "secrets"):
        assert store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    assert store.kind in ("sqlite", "postgresql")
    assert store.database_url.startswith(store.kind)


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "coordinator.db")
    try:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_reopening_runs_no_migration_twice(database: Path | str) -> None:
    Store(database).close()

    reopened = Store(database)  # a second CREATE TABLE would raise
    try:
        assert reopened.schema_version == len(MIGRATIONS)
    finally:
        reopened.close()


def test_an_older_schema_is_migrated_forward(database: Path | str) -> None:
    # A database at version 0 (as a first release would have left it, before any migration): all of them run.
    if isinstance(database, Path):
        sqlite3.connect(database).close()

    store = Store(database)
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert store.list_jobs(include_finished=True) == []
    finally:
        store.close()


# --- durability ----------------------------------------------------------------------------------------------


def test_jobs_hosts_and_allocations_survive_a_restart(database: Path | str) -> None:
    spec = parse_spec(SPEC_TEXT)
    inv = inventory()
    first = Store(database)
    first.add_token(hash_secret("token-1"), "alice", "user")
    first.ensure_host("host-1", "dgx1")
    first.set_inventory("host-1", inv, generation_of(inv))
    job = first.insert_job("j-0001", "train", spec, "")
    with first.tx() as db:
        first.insert_allocation(db, "a-1", job.id, "host-1", (0, 1), (0, 1), tuple(range(16)), 512 * 1024)
        first.set_job_state(db, job, JobState.ASSIGNED)
        first.bump_index(db, "host-1")
    first.close()

    store = Store(database)
    try:
        again = store.get_job("j-0001")
        assert again is not None
        assert again.spec == spec
        assert (again.name, again.priority, again.status, again.seq) == (
            "train",
            50,
            JobState.ASSIGNED,
            job.seq,
        )
        host = store.get_host("host-1")
        assert host is not None
        assert host.inventory == inv
        assert host.generation == generation_of(inv)
        assert host.desired_index == 2
        alloc = store.get_allocation("a-1")
        assert alloc is not None
        assert (alloc.job_id, alloc.host_id, alloc.blocks, alloc.gpus) == ("j-0001", "host-1", (0, 1), (0, 1))
        assert alloc.cpus == tuple(range(16))
        assert (alloc.desired, alloc.state) == ("run", AllocState.STARTING)
        assert [a.id for a in store.active_allocations("host-1")] == ["a-1"]
        principal = Accounts(store).authenticate("token-1")
        assert principal is not None and (principal.name, principal.role) == ("alice", "user")
    finally:
        store.close()


def test_a_failed_transaction_leaves_nothing_behind(database: Path | str) -> None:
    store = Store(database)
    job = store.insert_job("j-0001", "train", parse_spec(SPEC_TEXT), "")
    with pytest.raises(RuntimeError), store.tx() as db:
        store.set_job_state(db, job, JobState.ASSIGNED)
        raise RuntimeError("the coordinator crashed mid-way")
    store.close()

    store = Store(database)
    try:
        again = store.get_job("j-0001")
        assert again is not None
        assert again.status is JobState.SUBMITTED
    finally:
        store.close()


# --- transitions ---------------------------------------------------------------------------------------------


def test_a_job_walks_to_done_with_timestamps(store: Store) -> None:
    store.insert_job("j-1", "train", parse_spec(SPEC_TEXT), "")

    running = move(store, "j-1", JobState.PENDING, JobState.ASSIGNED, JobState.PULLING, JobState.RUNNING)
    assert running.started_at is not None and running.finished_at is None

    done = move(store, "j-1", JobState.DONE)
    assert done.status is JobState.DONE
    assert done.started_at == running.started_at
    assert done.finished_at is not None


def test_a_job_heard_of_only_once_it_ended_ran(store: Store) -> None:
    """A job that starts and ends between two syncs of its agent is first reported with its exit code:
    it ran, and started when the coordinator heard of it. One that ended without running did not."""
    assigned = []
    for job_id in ("j-1", "j-2"):
        store.insert_job(job_id, "train", parse_spec(SPEC_TEXT), "")
        assigned.append(move(store, job_id, JobState.PENDING, JobState.ASSIGNED))
    with store.tx() as db:
        ran = store.set_job_state(db, assigned[0], JobState.DONE, exit_code=0)
        never = store.set_job_state(db, assigned[1], JobState.FAILED, "no such image")
    assert ran.started_at is not None and ran.started_at == ran.finished_at
    assert never.started_at is None


def test_an_invalid_transition_is_refused_and_changes_nothing(store: Store) -> None:
    store.insert_job("j-1", "train", parse_spec(SPEC_TEXT), "")
    done = move(store, "j-1", JobState.ASSIGNED, JobState.RUNNING, JobState.DONE)

    with pytest.raises(InvalidTransition), store.tx() as db:
        store.set_job_state(db, done, JobState.RUNNING)

    again = store.get_job("j-1")
    assert again is not None
    assert again.status is JobState.DONE
    assert again.finished_at == done.finished_at


def test_a_submitted_job_cannot_run_before_it_is_assigned(store: Store) -> None:
    job = store.insert_job("j-1", "train", parse_spec(SPEC_TEXT), "")

    with pytest.raises(InvalidTransition), store.tx() as db:
        store.set_job_state(db, job, JobState.RUNNING)


def test_a_pending_reason_can_change_while_pending(store: Store) -> None:
    store.insert_job("j-1", "train", parse_spec(SPEC_TEXT), "")
    pending = move(store, "j-1", JobState.PENDING)

    with store.tx() as db:
        store.set_job_state(db, pending, JobState.PENDING, "no host with 2 free H100 blocks; largest free: 1")

    again = store.get_job("j-1")
    assert again is not None
    assert again.reason == "no host with 2 free H100 blocks; largest free: 1"


# --- finding jobs --------------------------------------------------------------------------------------------


def test_find_jobs_by_id_prefix_and_by_name(store: Store) -> None:
    spec = parse_spec(SPEC_TEXT)
    for job_id, name in [("j-abc1", "train"), ("j-abd2", "eval"), ("j-xyz3", "train")]:
        store.insert_job(job_id, name, spec, "")

    assert [j.id for j in store.find_jobs("j-ab")] == ["j-abd2", "j-abc1"]  # newest first
    assert [j.id for j in store.find_jobs("j-abc1")] == ["j-abc1"]
    assert [j.id for j in store.find_jobs("J-ABC")] == ["j-abc1"]  # an id's case does not matter
    assert [j.id for j in store.find_jobs("train")] == ["j-xyz3", "j-abc1"]
    assert store.find_jobs("j-q") == []
    assert store.find_jobs("tra") == []  # a name matches whole, not by prefix


def test_find_jobs_treats_like_wildcards_literally(store: Store) -> None:
    spec = parse_spec(SPEC_TEXT)
    for job_id in ["ab_1", "abX1", "a%b", "aXYb", "a\\c"]:
        store.insert_job(job_id, "train", spec, "")

    assert [j.id for j in store.find_jobs("ab_")] == ["ab_1"]
    assert [j.id for j in store.find_jobs("a%")] == ["a%b"]
    assert store.find_jobs("%") == []
    assert store.find_jobs("_") == []
    assert [j.id for j in store.find_jobs("a\\")] == ["a\\c"]


def test_list_jobs_hides_finished_ones_unless_asked(store: Store) -> None:
    spec = parse_spec(SPEC_TEXT)
    store.insert_job("j-1", "train", spec, "")
    store.insert_job("j-2", "train", spec, "")
    move(store, "j-1", JobState.ASSIGNED, JobState.FAILED)

    assert [j.id for j in store.list_jobs(include_finished=False)] == ["j-2"]
    assert [j.id for j in store.list_jobs(include_finished=True)] == ["j-2", "j-1"]
    assert [j.id for j in store.jobs_in(JobState.SUBMITTED, JobState.PENDING)] == ["j-2"]


def test_a_host_reads_back_its_new_inventory_not_the_one_read_before(store: Store) -> None:
    old = inventory()
    new = msgspec.structs.replace(old, hostname="dgx1-renamed", memory_mib=old.memory_mib // 2)
    store.ensure_host("host-1", "dgx1")
    store.set_inventory("host-1", old, generation_of(old))
    assert store.get_host("host-1").inventory == old  # type: ignore[union-attr]
    store.set_inventories([("host-1", new, generation_of(new))])  # through the background connection
    [host] = store.list_hosts()
    assert (host.inventory, host.generation) == (new, generation_of(new))
