"""Job arrays' pure parts: Slurm's `--array` syntax, the `%N` eligibility rule, what `ps` says of an array,
the task's environment, and the store's migration and setting."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.env import job_env
from cli.render import array_counts
from coordinator.arrays import ArrayLoad, array_status, within_limits
from coordinator.main import _load
from coordinator.store import MIGRATIONS, Store
from shared.arrays import MAX_ARRAY_INDEX, check_array, parse_array
from shared.spec import SpecError, TaskSpec
from shared.wire import AllocationSpec, ArraySummary, ArrayTask, Block, Inventory

# --- the syntax ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indices", "limit"),
    [
        ("0-15", tuple(range(16)), 0),
        ("0,6,16-32", (0, 6, *range(16, 33)), 0),
        ("0-15:4", (0, 4, 8, 12), 0),
        ("1-1000%50", tuple(range(1, 1001)), 50),
        ("7", (7,), 0),
        ("3,1,3,2", (1, 2, 3), 0),  # in order, each once, as Slurm's bitmap keeps them
        ("0-2%9", (0, 1, 2), 9),  # a limit above the count limits nothing, as in Slurm
    ],
)
def test_slurms_array_syntax(text: str, indices: tuple[int, ...], limit: int) -> None:
    parsed = parse_array(text, 10_000)
    assert (parsed.indices, parsed.limit, parsed.text) == (indices, limit, text.partition("%")[0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected N, A-B or A-B:STEP"),
        ("1-", "expected N, A-B or A-B:STEP"),
        ("-3", "expected N, A-B or A-B:STEP"),
        ("1,,2", "expected N, A-B or A-B:STEP"),
        (" 1-3", "expected N, A-B or A-B:STEP"),
        ("1-3:", "expected N, A-B or A-B:STEP"),
        ("2:3", "expected N, A-B or A-B:STEP"),  # a step needs a range
        ("١-٣", "expected N, A-B or A-B:STEP"),  # digits, but not ASCII ones
        ("5-1", "'5-1' ends before it starts"),
        ("1-9:0", "the step must be at least 1"),
        ("1-9%0", "%0 would run no task"),
        ("1-9%", "expected a number of tasks after %"),
        ("1-9%2%3", "expected a number of tasks after %"),
        (f"0-{MAX_ARRAY_INDEX + 1}", f"index {MAX_ARRAY_INDEX + 1} is over the largest index"),
        ("0-100", "101 tasks is over the coordinator's limit of 100 per array"),
        ("1," * 6000 + "1", "over 10000 characters"),
    ],
)
def test_a_bad_array_is_one_line_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_array(text, 100)
    assert refused.value.field == "array" and message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_task_count_is_checked_before_any_index_is_listed() -> None:
    with pytest.raises(SpecError, match="4000001 tasks is over"):
        parse_array(f"0-{MAX_ARRAY_INDEX}", 10)
    check_array(f"0-{MAX_ARRAY_INDEX}")  # the CLI's check builds nothing either


# --- the %N rule ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    array_id: str | None


def test_the_limit_lets_through_only_what_leaves_room() -> None:
    jobs = [Job("a1", "A"), Job("x", None), Job("a2", "A"), Job("a3", "A"), Job("b1", "B")]
    eligible, held = within_limits(jobs, {"A": ArrayLoad(limit=3, active=1)})
    assert [j.id for j in eligible] == ["a1", "x", "a2", "b1"]  # in their order; B has no limit
    assert held == {"a3": "array at its limit: 3 of 3 running"}


@given(
    st.lists(st.sampled_from(["A", "B", "C", None]), max_size=40),
    st.dictionaries(
        st.sampled_from(["A", "B", "C"]),
        st.tuples(st.integers(1, 6), st.integers(0, 8)).map(lambda t: ArrayLoad(*t)),
    ),
)
def test_an_array_never_gets_more_than_its_limit_and_always_fills_its_room(
    arrays: list[str | None], loads: dict[str, ArrayLoad]
) -> None:
    jobs = [Job(f"j{i}", array) for i, array in enumerate(arrays)]
    eligible, held = within_limits(jobs, loads)
    assert [j for j in jobs if j in eligible or j.id in held] == jobs and not set(held) & {
        j.id for j in eligible
    }
    for array, load in loads.items():
        waiting = sum(1 for j in jobs if j.array_id == array)
        let_through = sum(1 for j in eligible if j.array_id == array)
        assert let_through == min(waiting, max(0, load.limit - load.active))
    assert all(j.array_id in loads for j in jobs if j.id in held)


# --- what ps says --------------------------------------------------------------------------------------------


def test_ps_counts_read_ended_then_running_then_waiting() -> None:
    summary = ArraySummary(
        indices="1-1000",
        task_count=1000,
        counts={"pending": 30, "running": 150, "done": 812, "submitted": 8},
    )
    assert array_counts(summary) == "812 done, 150 running, 38 pending"
    limited = ArraySummary(indices="1-4", task_count=4, task_limit=2, counts={"running": 2, "pending": 2})
    assert array_counts(limited) == "2 running, 2 pending (at most 2 at once)"


@pytest.mark.parametrize(
    ("counts", "status"),
    [
        ({"done": 3, "running": 1, "pending": 5}, "running"),
        ({"done": 3, "pending": 5}, "pending"),
        ({"done": 3, "failed": 1, "stopped": 1}, "failed"),
        ({"done": 3, "stopped": 1}, "stopped"),
        ({"done": 4}, "done"),
    ],
)
def test_an_arrays_status_is_its_busiest_tasks(counts: dict[str, int], status: str) -> None:
    assert array_status(counts) == status


# --- the task's environment ----------------------------------------------------------------------------------


def test_a_task_sees_its_index_under_our_names_and_slurms() -> None:
    inventory = Inventory(
        hostname="h",
        cpu_count=1,
        memory_mib=1024,
        disk_mib=1024,
        gpus=(),
        blocks=(Block(index=0, gpus=(), cpus=(0,), memory_mib=1024, disk_mib=1024),),
    )
    alloc = AllocationSpec(
        id="a-1",
        job_id="j1",
        job_name="train[7]",
        desired="run",
        spec=TaskSpec(commands=("true",), env={"SLURM_ARRAY_TASK_ID": "spoofed"}),
        blocks=(0,),
        gpus=(),
        cpus=(0,),
        memory_mib=1024,
        array=ArrayTask(array_id="3f2a91bc", index=7, count=5, min_index=1, max_index=9),
    )
    env = job_env(alloc, inventory, "/work")
    assert {k: v for k, v in env.items() if "ARRAY" in k} == {
        "GPUCTL_ARRAY_JOB_ID": "3f2a91bc",
        "GPUCTL_ARRAY_INDEX": "7",
        "GPUCTL_ARRAY_TASK_COUNT": "5",
        "SLURM_ARRAY_JOB_ID": "3f2a91bc",
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_TASK_COUNT": "5",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "9",
    }
    alone = job_env(msgspec.structs.replace(alloc, array=None), inventory, "/work")
    assert alone["SLURM_ARRAY_TASK_ID"] == "spoofed"  # not a task: the spec's own value, as any variable
    assert "GPUCTL_ARRAY_INDEX" not in alone


# --- the store and the setting -------------------------------------------------------------------------------


def test_a_store_of_the_previous_version_keeps_its_jobs_outside_any_array(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        db.executescript(script)
    db.execute(
        "INSERT INTO jobs(id, name, spec, priority, status, submitted_at) VALUES ('j1', 'old', ?, 0, 'done', 0)",
        ('{"commands": ["true"]}',),
    )
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()
    store = Store(path)
    try:
        job = store.get_job("j1")
        assert job is not None and (job.array_id, job.array_index) == (None, None)
    finally:
        store.close()


def test_the_array_size_cap_is_a_setting(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {tmp_path}\nmax_array_tasks: 50000\n")
    assert _load(config, None, None, None).settings.max_array_tasks == 50_000
    config.write_text(f"state_dir: {tmp_path}\nmax_array_tasks: lots\n")
    with pytest.raises(click.ClickException, match="max_array_tasks: expected a number from 1 to 4000001"):
        _load(config, None, None, None)
