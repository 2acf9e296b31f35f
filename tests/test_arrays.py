"""Job arrays end to end: a real coordinator, a real agent running plain processes, the real CLI. Each task
prints what it was told (its index, Slurm's variables) and when it started and ended, and the tests read
that from the tasks' own logs."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.api import Api, ApiError
from cli.main import main as gpuctl
from shared.spec import parse_spec
from shared.wire import JobView
from tests.docker_engine import Engine
from tests.harness import FAST, Cluster, cluster, reachable_tmpdir
from tests.test_docker import start_docker_agent
from tests.test_secrets import member


def cli(api: Api, tmp_path: Path, *args: str) -> tuple[int, str]:
    """`gpuctl ARGS` as a user runs it, on an 80-column terminal."""
    config = tmp_path / "cli.yaml"
    config.write_text(f"url: {api.config.url}\ntoken: {api.config.token}\nca_file: {api.config.ca_file}\n")
    result = CliRunner().invoke(gpuctl, list(args), env={"GPUCTL_CONFIG": str(config), "COLUMNS": "80"})
    return result.exit_code, result.output


SHOW_ENV = """
name: {name}
resources: {{gpu: 1}}
commands:
  - echo "index=$GPUCTL_ARRAY_INDEX slurm=$SLURM_ARRAY_TASK_ID array=$GPUCTL_ARRAY_JOB_ID/$SLURM_ARRAY_JOB_ID"
  - echo "count=$SLURM_ARRAY_TASK_COUNT/$GPUCTL_ARRAY_TASK_COUNT min=$SLURM_ARRAY_TASK_MIN max=$SLURM_ARRAY_TASK_MAX"
  - echo "START $(date +%s.%N)"
  - sleep {sleep_s}
  - echo "END $(date +%s.%N)"
"""


async def submit_array(api: Api, array: str, name: str = "train", sleep_s: float = 0) -> JobView:
    spec = parse_spec(SHOW_ENV.format(name=name, sleep_s=sleep_s))
    return await asyncio.to_thread(api.submit_array, spec, array)


async def wait_counts(
    c: Cluster, ref: str, until: Callable[[dict[str, int]], bool], timeout_s: float = 60
) -> JobView:
    """The array once its tasks' counts by status satisfy `until`."""
    async with asyncio.timeout(timeout_s):
        while True:
            view = await c.job(ref)
            assert view.array is not None
            if until(view.array.counts):
                return view
            await asyncio.sleep(0.05)


def ended(counts: dict[str, int]) -> bool:
    return set(counts) <= {"done", "failed", "stopped"}


async def test_each_task_sees_its_index_and_slurms_variables_in_its_environment() -> None:
    async with cluster() as c:
        c.start_agent("host-a", "8xH100:80GB")
        array = await submit_array(c.api, "0-6:2,9,4")  # 0, 2, 4, 6, 9: the repeated 4 counts once
        assert array.array is not None and array.array.task_count == 5 and array.name == "train[0-6:2,9,4]"
        done = await wait_counts(c, array.id, ended)
        assert done.array is not None and done.array.counts == {"done": 5} and done.status == "done"
        for index in (0, 2, 4, 6, 9):
            log = (await c.full_log(f"{array.id}[{index}]")).decode()
            assert f"index={index} slurm={index} array={array.id}/{array.id}" in log
            assert "count=5/5 min=0 max=9" in log
        by_name = (await c.full_log("train[9]")).decode()  # the newest array of that name
        assert "index=9 " in by_name


async def test_a_task_in_a_container_sees_the_same_variables(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-arrays")
        spec = parse_spec(
            f"image: {docker_engine.image}\ncommands:\n"
            '  - echo "index=$GPUCTL_ARRAY_INDEX slurm=$SLURM_ARRAY_TASK_ID max=$SLURM_ARRAY_TASK_MAX"\n'
        )
        array = await asyncio.to_thread(c.api.submit_array, spec, "3,5")
        for index in (3, 5):
            log = (await c.full_log(f"{array.id}[{index}]")).decode()
            assert log == f"index={index} slurm={index} max=5\n"


def overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


GATED = """
name: gated
commands:
  - echo "START $(date +%s.%N)"
  - while [ ! -e {gate} ]; do sleep 0.05; done
  - echo "END $(date +%s.%N)"
"""


async def test_the_percent_limit_holds_back_tasks_and_is_never_exceeded() -> None:
    async with cluster() as c:
        c.start_agent("host-a", "8xH100:80GB")  # room for 8 at once: only the limit holds them back
        gate = reachable_tmpdir() / "open"  # the tasks run until it exists
        spec = parse_spec(GATED.format(gate=gate))
        array = await asyncio.to_thread(c.api.submit_array, spec, "1-10%3")
        await wait_counts(c, array.id, lambda counts: counts.get("running", 0) >= 3)
        await asyncio.sleep(1)  # a few syncs: were the limit not kept, more would start now
        view = await c.job(array.id)
        assert view.array is not None and view.array.counts == {"running": 3, "pending": 7}
        assert view.reason == "array at its limit: 3 of 3 running"
        gate.touch()
        placed = []

        def all_done(counts: dict[str, int]) -> bool:
            placed.append(sum(counts.get(s, 0) for s in ("assigned", "pulling", "running")))
            return counts == {"done": 10}

        await wait_counts(c, array.id, all_done)
        assert max(placed) <= 3  # as the store saw it, sampled
        intervals = []
        for index in range(1, 11):
            log = (await c.full_log(f"{array.id}[{index}]")).decode()
            start, end = (float(re.search(rf"{word} ([0-9.]+)", log)[1]) for word in ("START", "END"))  # type: ignore[index]
            intervals.append((start, end))
        assert overlap(intervals) == 3  # the first three ran together; never more


async def test_stop_and_logs_of_one_task_and_of_the_whole_array() -> None:
    async with cluster() as c:
        c.start_agent("host-a", "8xH100:80GB")
        array = await submit_array(c.api, "0-3", sleep_s=60)
        for index in range(4):
            await c.wait_for(f"{array.id}[{index}]", "running")
        stopped = await asyncio.to_thread(c.api.stop, f"{array.id}[2]")
        assert stopped.array_index == 2 and stopped.array_id == array.id
        await c.wait_for(f"{array.id}[2]", "stopped")
        assert (await c.job(f"{array.id}[1]")).status == "running"
        log = await asyncio.to_thread(c.api.logs, f"{array.id}[1]", 0, False)
        assert b"index=1 slurm=1" in log.data
        with pytest.raises(ApiError, match=r"is an array of 4 tasks, indices 0-3: name one, as train\[0\]"):
            await asyncio.to_thread(c.api.logs, array.id, 0, False)
        with pytest.raises(ApiError, match=r"has no index 7; its indices: 0-3"):
            await c.job(f"{array.id}[7]")
        await asyncio.to_thread(c.api.stop, "train")  # by name: the whole array
        done = await wait_counts(c, array.id, ended)
        assert done.array is not None and done.array.counts == {"stopped": 4}


async def test_ps_folds_an_array_into_one_line_and_lists_its_tasks(tmp_path: Path) -> None:
    async with cluster() as c:
        c.start_agent("host-a", "2xH100:80GB")  # two at once: the rest wait
        array = await submit_array(c.api, "1-6", sleep_s=60)
        await c.wait_for(f"{array.id}[2]", "running")
        await c.submit("name: single\ncommands: [sleep 60]")
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "ps")
        assert code == 0, out
        lines = [line for line in out.splitlines() if array.id in line]
        assert len(lines) == 1, out
        assert "train[1-6]" in lines[0] and "running" in lines[0]
        assert not re.search(r"train\[[0-9]+\]", out), out  # no task on a line of its own
        assert "2 running, 4 pending" in re.sub(r"\s+", " ", out)  # the reason column may wrap
        assert all(len(line) <= 80 for line in out.splitlines()), out
        assert "single" in out
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "ps", array.id)
        assert code == 0, out
        assert all(f"train[{i}]" in out for i in range(1, 7)), out
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "stop", f"{array.id}[1]")
        assert code == 0 and "stopping" in out, out


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        ("5-1", "array: '5-1' ends before it starts"),
        ("1-10%0", "array: %0 would run no task"),
        ("1,,2", "array: expected N, A-B or A-B:STEP"),
        ("0-20", "array: 21 tasks is over the coordinator's limit of 16 per array"),
    ],
)
async def test_a_bad_array_is_refused_with_one_line_naming_the_field(array: str, expected: str) -> None:
    async with cluster(dataclasses.replace(FAST, max_array_tasks=16)) as c:
        with pytest.raises(ApiError) as refused:
            await submit_array(c.api, array)
        assert expected in str(refused.value) and "\n" not in str(refused.value)
        assert c.coordinator.coordinator.store.list_jobs(True) == []


async def test_the_cli_refuses_a_bad_array_before_it_sends_anything(tmp_path: Path) -> None:
    async with cluster() as c:
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "submit", "--array", "1-5:0", "--", "true")
        assert code == 1 and out.strip() == "Error: submit: array: '1-5:0': the step must be at least 1"


async def test_the_cli_submits_an_array_in_one_go_and_logs_takes_one_task(tmp_path: Path) -> None:
    async with cluster() as c:
        c.start_agent("host-a", "8xH100:80GB")
        args = ("submit", "--name", "sweep", "--array", "1-3", "--", "sh", "-c", "echo i=$GPUCTL_ARRAY_INDEX")
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, *args)
        assert code == 0 and re.fullmatch(r"array ([0-9a-f]{8}) \(sweep\[1-3\]\): 3 tasks\n", out), out
        array_id = out.split()[1]
        await wait_counts(c, array_id, lambda counts: counts == {"done": 3})
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "logs", "sweep[2]")
        assert (code, out) == (0, "i=2\n")
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "logs", "sweep")
        assert code == 1 and out == (
            f"Error: {array_id} (sweep) is an array of 3 tasks, indices 1-3: name one, as sweep[1]\n"
        )


async def test_a_thousand_tasks_are_one_request_and_one_transaction() -> None:
    async with cluster() as c:  # no host: every task stays pending, with the reason
        array = await submit_array(c.api, "1-1000%50")
        store = c.coordinator.coordinator.store
        rows = store.db.execute("SELECT COUNT(*), MIN(array_index), MAX(array_index) FROM jobs").fetchone()
        assert tuple(rows) == (1000, 1, 1000)
        view = await c.job("train")
        assert view.id == array.id and view.array is not None and view.array.counts == {"pending": 1000}
        assert view.reason.startswith("no host")  # the first task's: the next ones wait behind it
        assert (await c.job("train[51]")).reason == "array at its limit: 50 of 50 running"


async def test_another_projects_array_is_not_found(tmp_path: Path) -> None:
    async with cluster() as c:
        alice, bob = await member(c, "alice"), await member(c, "bob")
        array = await submit_array(alice, "1-3")
        for ref in (array.id, f"{array.id}[1]", "train", "train[1]"):
            with pytest.raises(ApiError, match="no job"):
                await asyncio.to_thread(bob.job, ref)
            with pytest.raises(ApiError, match="no job"):
                await asyncio.to_thread(bob.stop, ref)
        assert await asyncio.to_thread(bob.jobs, True) == []
        assert [j.id for j in await asyncio.to_thread(alice.jobs, True)] == [array.id]
