"""A coordinator on PostgreSQL, end to end: real TLS, a real agent, a job placed, run and logged, and the
job still there after the coordinator restarts on the same database."""

from __future__ import annotations

import asyncio

from tests.harness import cluster


async def test_a_job_runs_end_to_end_on_postgresql_and_survives_a_restart(postgres_url: str) -> None:
    async with cluster(database=postgres_url) as c:
        assert c.coordinator.coordinator.store.kind == "postgresql"
        c.start_agent("host-pg", "2xH100:80GB")
        job = await c.submit("commands: ['seq 1 300', 'exit 3']\nresources: {gpu: 2}")
        log = await c.full_log(job.id)
        final = await c.wait_for(job.id, "done", "failed")
        assert (final.status, final.exit_code) == ("failed", 3)
        assert log == "".join(f"{n}\n" for n in range(1, 301)).encode()
        second = await c.submit("commands: [true]\nresources: {gpu: 1}")
        assert (await c.wait_for(second.id, "done", "failed")).status == "done"
        await c.stop_agent("host-pg")

        await c.restart_coordinator()
        assert c.coordinator.coordinator.store.database_url == postgres_url
        again = await c.job(job.id)
        assert (again.status, again.exit_code) == ("failed", 3)
        jobs = await asyncio.to_thread(c.api.jobs, True)
        assert [j.id for j in jobs] == [second.id, job.id]
        [host] = await asyncio.to_thread(c.api.hosts)
        assert host.name == "host-pg"


async def test_an_agent_s_reason_with_a_nul_is_stored_on_postgresql(postgres_url: str) -> None:
    """PostgreSQL's text refuses NUL; a reason is the agent's text (a registry's, a tool's message), and
    the sync that carries it, which the agent sends again and again, must not fail for it."""
    from shared.wire import AllocationStatus, SyncRequest

    async with cluster(database=postgres_url) as c:
        c.start_agent("host-pg", "1xL4")
        job = await c.submit("commands: ['sleep 300']\nresources: {gpu: 1}")
        running = await c.wait_for(job.id, "running")
        await c.stop_agent("host-pg")
        assert running.allocation_id is not None
        coord = c.coordinator.coordinator
        [host] = coord.store.list_hosts()
        report = SyncRequest(
            agent_version="x",
            inventory_generation=host.generation,
            allocations=[
                AllocationStatus(id=running.allocation_id, state="failed", exit_code=1, reason="bad\x00image")
            ],
            desired_index=0,
        )
        await coord.sync(host.id, report)
        failed = await c.wait_for(job.id, "failed")
        assert failed.reason == "bad\ufffdimage"
