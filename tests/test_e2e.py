"""End to end: a real coordinator, two agents with simulated GPUs, real processes, real mutual TLS."""

from __future__ import annotations

import asyncio
import itertools
import re

from tests.harness import cluster

# Each job prints when it started and ended (wall clock), the GPUs it was given, and numbered lines.
JOB = """
type: task
name: job{i}
resources: {{gpu: {gpus}}}
commands:
  - echo "START $(date +%s.%N) gpus=$CUDA_VISIBLE_DEVICES n=$GPUCTL_GPUS_NUM dn=$DSTACK_GPUS_NUM id=$GPUCTL_JOB_ID"
  - for n in $(seq 0 {last}); do echo "line {i} $n"; done
  - sleep 0.{nap}
  - echo "END $(date +%s.%N)"
  - exit {code}
"""


async def test_forty_jobs_on_two_hosts_share_no_gpu_and_lose_no_line() -> None:
    async with cluster() as c:
        c.start_agent("host-a", "8xH100:80GB", "auto")  # 8 blocks of 1 GPU
        c.start_agent("host-b", "8xH100:80GB", 2)  # 4 blocks of 2 GPUs
        sizes = list(itertools.islice(itertools.cycle([1, 2, 4, 8, 2]), 40))
        lines = 200
        jobs = [
            await c.submit(JOB.format(i=i, gpus=g, last=lines - 1, nap=i % 4 + 1, code=i % 4))
            for i, g in enumerate(sizes)
        ]
        logs = await asyncio.gather(*(c.full_log(j.id, timeout_s=240) for j in jobs))
        intervals = []
        for i, (job, log) in enumerate(zip(jobs, logs, strict=True)):
            final = await c.job(job.id)
            assert final.exit_code == i % 4
            assert final.status == ("done" if i % 4 == 0 else "failed")
            text = log.decode()
            start = re.search(r"^START (\S+) gpus=(\S*) n=(\d+) dn=(\d+) id=(\S+)$", text, re.M)
            end = re.search(r"^END (\S+)$", text, re.M)
            assert start and end, text
            gpus = {int(g) for g in start.group(2).split(",")}
            assert len(gpus) == sizes[i] == int(start.group(3)) == int(start.group(4))
            assert start.group(5) == job.id
            assert set(final.gpus) == gpus
            numbered = [line for line in text.splitlines() if line.startswith("line ")]
            assert numbered == [f"line {i} {n}" for n in range(lines)]  # each once, in order
            intervals.append((final.host, gpus, float(start.group(1)), float(end.group(1)), job.id))
        assert {h for h, *_ in intervals} == {"host-a", "host-b"}
        for (h1, g1, s1, e1, j1), (h2, g2, s2, e2, j2) in itertools.combinations(intervals, 2):
            if h1 == h2 and s1 < e2 and s2 < e1:
                assert not g1 & g2, f"{j1} and {j2} overlapped in time on {h1} and shared GPUs {g1 & g2}"


async def test_a_job_no_host_can_fit_is_accepted_and_pending_with_its_reason() -> None:
    async with cluster() as c:
        c.start_agent("host-c", "8xH100:80GB", 2)  # blocks of 4 GPUs
        await asyncio.sleep(0.5)
        too_big = await c.submit("commands: [true]\nresources: {gpu: 16}")
        assert too_big.status == "pending"
        assert "can ever fit" in too_big.reason and "16" in too_big.reason
        odd = await c.submit("commands: [true]\nresources: {gpu: 3}")
        assert odd.status == "pending"
        assert "blocks of 4" in odd.reason
        listed = {j.id: j for j in await asyncio.to_thread(c.api.jobs, False)}
        assert listed[too_big.id].reason == too_big.reason


async def test_stop_ends_a_running_job() -> None:
    async with cluster() as c:
        c.start_agent("host-d", "2xA10G:24GB")
        job = await c.submit("commands: ['echo up', 'sleep 300']\nresources: {gpu: 1}")
        await c.wait_for(job.id, "running")
        await asyncio.to_thread(c.api.stop, job.id)
        stopped = await c.wait_for(job.id, "stopped", timeout_s=20)
        assert stopped.exit_code is not None
        assert (await c.full_log(job.id)).startswith(b"up\n")


async def test_the_jobs_environment_never_reaches_its_supervisor() -> None:
    """The supervisor may run as root: a job's PYTHONPATH must not make it import the job's code."""
    async with cluster() as c:
        c.start_agent("host-e", "1xL4")
        trap = c.root / "trap"
        trap.mkdir(mode=0o777)
        trap.chmod(0o777)
        marker = trap / "imported"
        (trap / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(9)\n")
        job = await c.submit(
            f"commands: ['echo ran with $PYTHONPATH']\nresources: {{gpu: 1}}\nenv: {{PYTHONPATH: {trap}}}"
        )
        assert await c.full_log(job.id) == f"ran with {trap}\n".encode()
        assert (await c.job(job.id)).status == "done"
        assert not marker.exists()


async def test_a_report_that_steps_back_never_moves_a_job_backwards() -> None:
    """A re-adopting agent may say 'starting' for a job the coordinator knows is running."""
    from shared.wire import AllocationStatus, SyncRequest

    async with cluster() as c:
        c.start_agent("host-b", "1xL4")
        job = await c.submit("commands: ['sleep 300']\nresources: {gpu: 1}")
        running = await c.wait_for(job.id, "running")
        await c.stop_agent("host-b")
        assert running.allocation_id is not None
        coord = c.coordinator.coordinator
        hosts = coord.store.list_hosts()
        back = SyncRequest(
            agent_version="x",
            inventory_generation=hosts[0].generation,
            allocations=[AllocationStatus(id=running.allocation_id, state="starting")],
            desired_index=0,
        )
        answer = await coord.sync(hosts[0].id, back)
        assert [a.id for a in answer.allocations] == [running.allocation_id]
        assert (await c.job(job.id)).status == "running"
