"""Each module that runs its own SQL on the store, once on SQLite and once on PostgreSQL: accounts, secrets,
upload quotas, the audit log, arrays, schedules and preemption's marks. On a real Coordinator and Store,
with no HTTP in between: what differs between the two is the database alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.accounting import Accounting, Tally
from coordinator.accounts import Accounts, Refused
from coordinator.audit import AuditLog
from coordinator.logstore import LogStore
from coordinator.secrets import NoSecret
from coordinator.service import Coordinator
from coordinator.settings import Settings
from coordinator.store import Store
from coordinator.usage_report import usage_report
from shared import tls
from shared.spec import parse_spec
from shared.states import AllocState, JobState
from shared.wire import generation_of
from tests.test_store import inventory

JOB = "type: task\ncommands: [sleep 1]\nresources: {gpu: H100:1}\n"


@pytest.fixture
def coord(tmp_path: Path, database: Path | str) -> Iterator[Coordinator]:
    coord = Coordinator(Store(database), LogStore(tmp_path / "logs"), tls.create_ca(), Settings())
    inv = inventory()
    coord.store.ensure_host("h1", "h1")
    coord.store.set_inventory("h1", inv, generation_of(inv))
    coord.last_seen["h1"] = time.time()
    yield coord
    coord.store.close()


def test_accounts_projects_users_fleets_and_join_tokens(coord: Coordinator) -> None:
    accounts = coord.accounts
    accounts.create_project("research")
    token = accounts.create_user("alice", "research", "member")
    principal = accounts.authenticate(token)
    assert principal is not None and (principal.name, principal.project) == ("alice", "research")
    accounts.set_quota("research", 4, None)
    assert accounts.quotas()["research"].gpus == 4
    policy = accounts.set_fleet("default", "cluster", True)
    assert (policy.cluster, accounts.fleets()["default"].preemption) == (True, True)
    assert [v.name for v in accounts.fleet_views()] == ["default"]

    token_id, secret, _ = accounts.create_join_token("default", 60, 1, {"rack": "a"})
    assert [t["id"] for t in accounts.join_tokens()] == [token_id]
    assert accounts.use_join_token(token_id, secret).labels == {"rack": "a"}
    with pytest.raises(Refused, match="used up"):
        accounts.use_join_token(token_id, secret)
    assert accounts.delete_join_token(token_id)

    accounts.record_cert(7, "h1", time.time() + 60)
    accounts.record_cert(7, "h1", time.time() + 60)  # recorded once: a second is ignored
    assert accounts.revoke_host("h1") == 1
    assert Accounts(coord.store).is_revoked(7)  # read back from the store


def test_a_secret_set_twice_keeps_the_second_value(coord: Coordinator) -> None:
    coord.secrets.set("default", "HF_TOKEN", "first")
    coord.secrets.set("default", "HF_TOKEN", "second")
    assert [s.name for s in coord.secrets.list("default")] == ["HF_TOKEN"]
    assert coord.secrets.value("default", "HF_TOKEN") == "second"
    coord.secrets.delete("default", "HF_TOKEN")
    with pytest.raises(NoSecret):
        coord.secrets.value("default", "HF_TOKEN")


def test_an_archive_uploaded_again_counts_once(coord: Coordinator) -> None:
    coord.quota.record("default", "arch-1", 100)
    coord.quota.record("default", "arch-1", 150)
    coord.quota.record("default", "arch-2", 50)
    assert coord.quota.used("default") == 200
    coord.quota.forget(["arch-1"])
    assert coord.quota.used("default") == 50


def test_audit_entries_are_numbered_by_the_database(coord: Coordinator) -> None:
    audit = AuditLog(coord.store)
    first = audit.started("alice", "default", "j1", 0, "h1", ["nvidia-smi"])
    second = audit.started("bob", "default", "j1", 0, "h1", ["bash"], kind="ssh")
    assert second > first
    audit.ended(first, 0, "")
    entries = audit.entries("j1")
    assert [(e.id, e.who, e.exit_code) for e in entries] == [(second, "bob", None), (first, "alice", 0)]


def test_an_array_is_placed_within_its_limit(coord: Coordinator) -> None:
    array = coord.submit_array(parse_spec(JOB), "0-3%2")
    tasks = coord.arrays.tasks(array.id, True)
    assert [t.array_index for t in tasks] == [0, 1, 2, 3]
    assert coord.arrays.counts(array.id) == {"assigned": 2, "pending": 2}
    assert coord.arrays.loads({array.id})[array.id].active == 2


def test_a_schedule_fires_once_for_its_time(coord: Coordinator) -> None:
    spec = parse_spec("type: task\ncommands: [true]\nschedule: {cron: '* * * * *'}\n")
    schedule = coord.submit_schedule(spec, now=0.0)
    assert [s.id for s in coord.schedules.due(120.0)] == [schedule.id]
    [job_id] = coord.fire_schedules(now=120.0)
    assert coord.fire_schedules(now=120.0) == []  # that time was handled
    assert [r.id for r in coord.schedules.runs(schedule.id)] == [job_id]
    assert coord.schedules.run_count(schedule.id) == 1


def test_an_allocation_runs_and_ends_with_its_times(coord: Coordinator) -> None:
    job = coord.submit(parse_spec(JOB))
    assert job.status is JobState.ASSIGNED
    alloc = coord.store.latest_allocation(job.id)
    assert alloc is not None and alloc.attempt == 1 and len(alloc.gpus) == 1
    assert [a.id for a in coord.store.active_allocations("h1")] == [alloc.id]
    with coord.store.tx() as db:
        coord.store.update_allocation(db, alloc.id, AllocState.RUNNING, None, "", None)
    running = coord.store.get_allocation(alloc.id)
    assert running is not None and running.started_at is not None and running.finished_at is None
    assert coord.usage.factors()["default"] <= 1.0  # it counts from its start
    with coord.store.tx() as db:
        coord.store.update_allocation(db, alloc.id, AllocState.EXITED, 0, "", 12)
    ended = coord.store.get_allocation(alloc.id)
    assert ended is not None and ended.started_at == running.started_at
    assert ended.finished_at is not None and ended.final_log_size == 12
    assert coord.store.active_allocations("h1") == []


def test_the_scheduler_reads_ends_and_loads_from_the_specs_and_allocations(coord: Coordinator) -> None:
    """The two reads that look into JSON columns (a spec's max_duration, an allocation's GPUs)."""
    timed = coord.submit(parse_spec(JOB.replace("resources:", "max_duration: 1h\nresources:")))
    coord.submit(parse_spec(JOB.replace("H100:1", "H100:2")))
    alloc = coord.store.latest_allocation(timed.id)
    assert alloc is not None
    assert coord._ends() == {"h1": dict.fromkeys(alloc.blocks, alloc.created_at + 3600)}
    load = coord._loads({"default", "research"})
    assert (load["default"].gpus, load["default"].jobs) == (3, 2)
    assert "research" not in load


def test_accounting_adds_readings_batches_and_reports_them(coord: Coordinator) -> None:
    """Job accounting's upsert (two batches of one allocation add up, the higher peak wins) and the usage
    report that reads it back with the allocations' spans, through a connection of its own."""
    job = coord.submit(parse_spec(JOB))
    alloc = coord.store.latest_allocation(job.id)
    assert alloc is not None
    with coord.store.tx() as db:
        coord.store.update_allocation(db, alloc.id, AllocState.RUNNING, None, "", None)
        running = coord.store.set_job_state(db, job, JobState.RUNNING)
    accounting = Accounting(coord.store)
    accounting._write([[(alloc.id, Tally(4000, 60.0 * 10, 10.0))]])
    accounting._write([[(alloc.id, Tally(3000, 20.0 * 10, 10.0))]])
    with coord.store.tx() as db:
        coord.store.update_allocation(db, alloc.id, AllocState.EXITED, 0, "", 0)
        coord.store.set_job_state(db, running, JobState.DONE, exit_code=0)
    report = usage_report(coord.store, 0.0, time.time() + 1, None, None, True)
    (line,) = report.lines
    assert (line.jobs, line.peak_memory_mib, line.utilization_pct) == (1, 4000, pytest.approx(40.0))
    assert line.gpu_hours > 0 and report.jobs[0].id == job.id
