"""Job accounting's costs: `python -m bench.accounting [JOBS]` (20,000).

1. The fold of one sync's readings (coordinator/accounting.py) on a host running 8 one-GPU jobs, 8 readings
   a sync, as the sync handler calls it on the event loop: the mean over SYNCS calls.
2. `GET /api/v1/usage` over JOBS finished jobs in 20 projects of 5 users (one allocation and its readings
   each, written straight into the store): the report's time (in its thread), and the longest the event
   loop waited meanwhile, read by a ticker on the loop (the report holds the GIL between its reads).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.scheduler import host
from coordinator.accounting import Accounting
from coordinator.store import Store
from coordinator.usage_report import usage_report
from shared.spec import TaskSpec
from shared.wire import GpuMetrics, SyncRequest, generation_of

SYNCS = 2000
GPUS = 8
PROJECTS, USERS = 20, 5
TICK_S = 0.001


def _running_host(store: Store) -> None:
    inventory = host(0).inventory
    store.ensure_host("h0", "h0")
    store.set_inventory("h0", inventory, generation_of(inventory))
    spec = TaskSpec(commands=("true",))
    for gpu in range(GPUS):
        store.insert_job(f"r{gpu}", "train", spec, "")
        with store.tx() as db:
            store.insert_allocation(db, f"ra{gpu}", f"r{gpu}", "h0", (gpu,), (gpu,), (0,), 1024)
            db.execute(
                "UPDATE allocations SET state='running', started_at=? WHERE id=?", (time.time(), f"ra{gpu}")
            )


def _finished_jobs(store: Store, jobs_n: int) -> None:
    spec = msgspec.json.encode(TaskSpec(commands=("true",))).decode()
    now = time.time()
    with store.tx() as db:
        for k in range(jobs_n):
            job = (f"f{k}", "train", spec, 0, "done", "", now - 500, f"p{k % PROJECTS}", f"u{k % USERS}")
            db.execute(
                "INSERT INTO jobs(id, name, spec, priority, status, reason, submitted_at, project, submitted_by,"
                " started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*job, now - 400, now - 10),
            )
            db.execute(
                "INSERT INTO allocations(id, job_id, host_id, blocks, gpus, cpus, memory_mib, created_at, state,"
                " started_at, finished_at) VALUES (?,?,'h0','[0]','[0,1]','[0]',1024,?,'exited',?,?)",
                (f"fa{k}", f"f{k}", now - 450, now - 400, now - 10),
            )
            db.execute("INSERT INTO allocation_readings VALUES (?,?,?,?)", (f"fa{k}", 40960, 2400.0, 40.0))


async def _fold_us(store: Store) -> float:
    accounting, hostrow = Accounting(store), store.get_host("h0")
    assert hostrow is not None
    readings = [GpuMetrics(index=i, utilization_pct=50.0, memory_used_mib=1000) for i in range(GPUS)]
    req = SyncRequest(agent_version="bench", inventory_generation=hostrow.generation, readings=readings)
    started = time.perf_counter()
    for _ in range(SYNCS):
        await accounting.fold(hostrow, req)
    return (time.perf_counter() - started) / SYNCS * 1e6


async def _report_ms(path: Path) -> tuple[float, float]:
    """The report's wall time, and the event loop's longest wait meanwhile (both ms)."""
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            worst = max(worst, time.perf_counter() - before - TICK_S)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    now = time.time()
    await asyncio.to_thread(usage_report, path, now - 7 * 86400, now, None, None, True)
    took = time.perf_counter() - started
    ticker.cancel()
    return took * 1000, worst * 1000


async def run(jobs_n: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = Store(Path(root) / "coordinator.db")
        _running_host(store)
        _finished_jobs(store, jobs_n)
        print(f"fold of {GPUS} readings, {GPUS} running allocations: {await _fold_us(store):.0f} us a sync")
        took_ms, stalled_ms = await _report_ms(store.path)
        print(
            f"usage report, {jobs_n:,} finished jobs: {took_ms:.0f} ms; the loop waited at most {stalled_ms:.1f} ms"
        )
        store.close()


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
