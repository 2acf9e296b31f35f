"""Per-project quotas with a real coordinator and agent: a quota caps what a project holds at once, its
next job waits with the reason (nothing is refused at submit) and starts when one of its jobs ends, told by
that change alone; `gpuctl queue` shows the order and why."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cli.api import Api
from shared.spec import parse_spec
from tests.harness import Cluster, cluster, reachable_tmpdir
from tests.test_arrays import cli
from tests.test_secrets import member

GATED = """
name: {name}
resources: {{gpu: {gpus}}}
commands:
  - while [ ! -e {gate} ]; do sleep 0.05; done
"""


async def submit_gated(api: Api, name: str, gate: Path, gpus: int = 1) -> str:
    """A job that holds its GPUs until `gate` exists; answers its id."""
    spec = parse_spec(GATED.format(name=name, gpus=gpus, gate=gate))
    return (await asyncio.to_thread(api.submit, spec)).id


async def wait_running(c: Cluster, *job_ids: str) -> None:
    for job_id in job_ids:
        await c.wait_for(job_id, "running")


async def test_a_quota_caps_a_project_and_its_held_job_starts_when_another_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster() as c:
        coord = c.coordinator.coordinator
        c.start_agent("quota-a", "8xH100:80GB")  # room for 8: only the quota holds them back
        research = await member(c, "research")
        code, out = await asyncio.to_thread(
            cli, c.api, tmp_path, "project", "quota", "research", "--gpus", "2"
        )
        assert (code, out) == (0, "project research: 2 GPUs\n")
        gates = [reachable_tmpdir() / f"open-{i}" for i in range(3)]
        first, second = [await submit_gated(research, f"r{i}", gates[i]) for i in range(2)]
        await wait_running(c, first, second)
        resync = coord.schedule_pass
        monkeypatch.setattr(coord, "schedule_pass", lambda: 0)  # no beat: the changes alone must do it
        third = await submit_gated(research, "r2", gates[2])
        other = await submit_gated(c.api, "d0", gates[2])  # another project is not held
        await wait_running(c, other)
        await asyncio.sleep(1)  # a few syncs: were the quota not kept, the third would start now
        held = await c.job(third)
        assert (held.status, held.reason) == ("pending", "project research is at its quota: 2 of 2 GPUs")
        gates[0].touch()
        assert (await c.wait_for(first, "done", "failed")).status == "done"
        await wait_running(c, third)
        assert (await c.job(second)).status == "running"  # two at once, never three
        monkeypatch.setattr(coord, "schedule_pass", resync)
        assert coord.schedule_pass() == 0 and coord.live.pending() == {}  # the changes missed nothing
        for gate in gates[1:]:
            gate.touch()


async def test_a_job_count_quota_holds_the_rest_and_queue_shows_the_order(tmp_path: Path) -> None:
    """And the factor `queue` shows comes from the GPU-hours the project's allocations ran."""
    async with cluster() as c:
        c.start_agent("quota-b", "8xH100:80GB")
        research = await member(c, "research")
        code, out = await asyncio.to_thread(
            cli, c.api, tmp_path, "project", "quota", "research", "--jobs", "1"
        )
        assert (code, out) == (0, "project research: 1 running jobs\n")
        gate = reachable_tmpdir() / "open"
        running = await submit_gated(research, "first-of-research", gate)
        await wait_running(c, running)
        waiting = await submit_gated(research, "second-of-research", gate)
        reason = "project research is at its quota: 1 of 1 running jobs"
        await c.wait_for(waiting, "pending")
        async with asyncio.timeout(30):
            while True:  # marked pending first, then given the quota's reason
                if (await c.job(waiting)).reason == reason:
                    break
                await asyncio.sleep(0.05)
        c.coordinator.coordinator.schedule_pass()  # the beat: fair share counts the running job's time
        code, out = await asyncio.to_thread(cli, research, tmp_path, "queue")
        assert code == 0, out
        lines = out.splitlines()
        assert max(map(len, lines)) <= 80, out
        assert lines[0].split() == ["#", "ID", "NAME", "PROJECT", "PRIO", "SHARE", "AGE", "REASON"]
        first = lines[1].split()
        assert first[:2] == ["1", waiting] and "research" in first and "0.50" in first, out  # all usage
        assert "at its quota" in out
        code, out = await asyncio.to_thread(cli, research, tmp_path, "queue", "--json")
        entries = json.loads(out)
        assert [(e["id"], e["project"], e["priority"], e["fair_share"], e["reason"]) for e in entries] == [
            (waiting, "research", 0, 0.5, reason)
        ]
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "project", "quota", "research")
        assert (code, out) == (0, "project research: no quota\n")
        await wait_running(c, waiting)  # the quota gone, it starts
        gate.touch()


async def test_a_quota_for_a_project_that_does_not_exist_is_one_line_naming_it(tmp_path: Path) -> None:
    async with cluster() as c:
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "project", "quota", "nope", "--gpus", "1")
        assert code != 0 and "project: no project 'nope'; create it first" in out and "Traceback" not in out


async def test_an_arrays_limit_and_its_projects_quota_hold_together(tmp_path: Path) -> None:
    """A project with a quota of 3 jobs: its array's `%2` lets two tasks run, its next job takes the third
    place, and the job after waits for the quota; the tasks the array holds say so."""
    async with cluster() as c:
        c.start_agent("quota-c", "8xH100:80GB")
        research = await member(c, "research")
        code, out = await asyncio.to_thread(
            cli, c.api, tmp_path, "project", "quota", "research", "--jobs", "3"
        )
        assert code == 0, out
        gate = reachable_tmpdir() / "open"
        spec = parse_spec(GATED.format(name="sweep", gpus=1, gate=gate))
        array = await asyncio.to_thread(research.submit_array, spec, "1-4%2")
        await wait_running(c, f"{array.id}[1]", f"{array.id}[2]")
        third = await submit_gated(research, "third", gate)
        await wait_running(c, third)
        fourth = await submit_gated(research, "fourth", gate)
        await c.wait_for(fourth, "pending")
        await asyncio.sleep(1)  # a few syncs: were either rule not kept, more would start now
        assert (await c.job(fourth)).reason == "project research is at its quota: 3 of 3 running jobs"
        assert (await c.job(f"{array.id}[3]")).reason == "array at its limit: 2 of 2 running"
        gate.touch()
        for ref in (f"{array.id}[4]", fourth):
            assert (await c.wait_for(ref, "done", "failed")).status == "done"
