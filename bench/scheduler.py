"""The scheduler alone: `python -m bench.scheduler [--quick]`.

(1) Placements per second: a mixed queue (jobs of 1, 2, 4 and 8 GPUs, three priorities) placed by the
coordinator's scheduler (coordinator/live_schedule.py) onto HOSTS simulated 8xH100 hosts cut in 8 blocks,
GPUs on two NUMA nodes, from a cold start (the state built from the queue and the fleet, then settled).
(2) The cost of one change on a full fleet with a queue waiting: one job submitted (it stays pending), and
one allocation ended (its blocks are placed again at once), for hosts x queue in {1,000, 10,000}^2; beside
it, one full pass of the reference `schedule()` over the same queue and fleet, which is what a change cost
before. The cost of a change must not grow with the queue. (3) One backfill plan (coordinator/backfill.py:
the reservations of the queue's first 16 waiting jobs, as the housekeeping beat makes it) on the same full
fleet, half the busy blocks with a known end, and the cost of a change while those reservations hold.
Prints a table; `run()` answers JSON-able data.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from typing import Any

from agent.blocks import make_blocks
from agent.detect.simulate import parse_simulated_gpus
from coordinator.backfill import BACKFILL_DEPTH
from coordinator.live_schedule import LiveSchedule
from coordinator.scheduler import HostCapacity, PendingJob, schedule
from shared.spec import GpuRequest, Range, Resources, TaskSpec
from shared.wire import Inventory

GPU_COUNTS = (1, 2, 4, 8)
CHANGES = 200  # timed changes per grid point; the median is reported


def host(i: int) -> HostCapacity:
    gpus = parse_simulated_gpus("8xH100:80GB")
    blocks = make_blocks(gpus, tuple(range(64)), 1024 * 1024, 1024 * 1024, "auto")
    inventory = Inventory(f"h{i}", 64, 1024 * 1024, 1024 * 1024, gpus, blocks, simulated=True)
    return HostCapacity(f"h{i}", f"h{i}", inventory)


def job(i: int, gpus: int | None = None) -> PendingJob:
    count = gpus or GPU_COUNTS[i % len(GPU_COUNTS)]
    spec = TaskSpec(commands=("true",), resources=Resources(gpu=GpuRequest(count=Range(count, count))))
    return PendingJob(f"j{i}", spec, i, priority=i % 3)


def placements_per_s(hosts_n: int, jobs_n: int) -> dict[str, Any]:
    """The whole queue and fleet handed over (what a coordinator's start does), then one settle that places
    what fits: placements per second of the settle, and of both together."""
    hosts = [host(i) for i in range(hosts_n)]
    jobs = [job(i) for i in range(jobs_n)]
    live = LiveSchedule()
    started = time.perf_counter()
    live.sync(jobs, hosts, {})
    synced = time.perf_counter()
    placed = len(live.settle().placements)
    settled = time.perf_counter()
    return {
        "hosts": hosts_n,
        "queue": jobs_n,
        "placed": placed,
        "load_s": round(synced - started, 3),
        "place_s": round(settled - synced, 3),
        "placements_per_s": round(placed / (settled - synced)),
        "with_load_per_s": round(placed / (settled - started)),
    }


def change_costs(hosts_n: int, queue_n: int, changes: int = CHANGES) -> dict[str, Any]:
    """Every block busy and `queue_n` jobs waiting; then one submit, and one end (placed again), timed."""
    full = frozenset(range(8))
    hosts = [replace(host(i), busy_blocks=full) for i in range(hosts_n)]
    queue = [job(i) for i in range(queue_n)]
    live = LiveSchedule()
    live.sync(queue, hosts, {})
    live.settle()
    submit_s = []
    for n in range(changes):
        started = time.perf_counter()
        live.add_job(job(queue_n + n))
        live.settle()
        submit_s.append(time.perf_counter() - started)
    end_s, placed = [], 0
    for n in range(changes):
        freed = hosts[n % hosts_n]
        started = time.perf_counter()
        live.set_host(replace(freed, busy_blocks=full - {n % 8}))  # a 1-GPU job ended there
        placed += len(live.settle().placements)
        end_s.append(time.perf_counter() - started)
        live.set_host(freed)  # as the coordinator's refresh of that host finds it: full again
        live.settle()
    started = time.perf_counter()
    schedule(queue, hosts)
    full_pass_s = time.perf_counter() - started
    return {
        "hosts": hosts_n,
        "queue": queue_n,
        "submit_us": round(statistics.median(submit_s) * 1e6),
        "end_us": round(statistics.median(end_s) * 1e6),
        "ends_placed": placed,
        "full_pass_ms": round(full_pass_s * 1000, 1),
    }


def plan_costs(hosts_n: int, queue_n: int, changes: int = CHANGES) -> dict[str, Any]:
    """Every block busy (half of them with a known end), `queue_n` jobs waiting: one plan of the
    reservations, timed; then one submit and one end, timed as in `change_costs`, with them in force."""
    full = frozenset(range(8))
    hosts = [replace(host(i), busy_blocks=full) for i in range(hosts_n)]
    live = LiveSchedule()
    live.sync([job(i) for i in range(queue_n)], hosts, {})
    live.settle()
    now = time.time()
    ends = {
        h.host_id: {b: now + 60 * (1 + (i + b) % 60) for b in range(0, 8, 2)} for i, h in enumerate(hosts)
    }
    started = time.perf_counter()
    reservations = live.plan(ends, now, BACKFILL_DEPTH)
    live.set_reservations(reservations, now)
    live.settle()
    plan_s = time.perf_counter() - started
    submit_s, end_s = [], []
    for n in range(changes):
        started = time.perf_counter()
        live.add_job(job(queue_n + n))
        live.settle()
        submit_s.append(time.perf_counter() - started)
    for n in range(changes):
        freed = hosts[n % hosts_n]
        started = time.perf_counter()
        live.set_host(replace(freed, busy_blocks=full - {n % 8}))
        live.settle()
        end_s.append(time.perf_counter() - started)
        live.set_host(freed)
        live.settle()
    return {
        "hosts": hosts_n,
        "queue": queue_n,
        "reserved": len(reservations),
        "plan_ms": round(plan_s * 1000, 1),
        "submit_us": round(statistics.median(submit_s) * 1e6),
        "end_us": round(statistics.median(end_s) * 1e6),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The two measures; `quick` shrinks them (1,000 hosts) for a smoke run. JSON-able."""
    sizes = (1_000,) if quick else (1_000, 10_000)
    hosts_n = sizes[-1]
    cold = placements_per_s(hosts_n, hosts_n * 2)  # a mixed queue fills about 8 GPUs per two jobs
    grid = [change_costs(h, q, 20 if quick else CHANGES) for h in sizes for q in sizes]
    plans = [plan_costs(h, sizes[-1], 20 if quick else CHANGES) for h in sizes]
    rows = [
        {
            "measure": f"placements/s, {cold['hosts']:,} hosts x 8 blocks, queue {cold['queue']:,}",
            "value": f"{cold['placements_per_s']:,} ({cold['with_load_per_s']:,} counting the load)",
        },
        *(
            {
                "measure": f"one change, {g['hosts']:,} hosts, queue {g['queue']:,}",
                "value": f"submit {g['submit_us']} us, end {g['end_us']} us (a full pass: {g['full_pass_ms']} ms)",
            }
            for g in grid
        ),
        *(
            {
                "measure": f"one backfill plan, {p['hosts']:,} hosts, queue {p['queue']:,}",
                "value": f"{p['plan_ms']} ms for {p['reserved']} reservations; then submit {p['submit_us']} us, "
                f"end {p['end_us']} us",
            }
            for p in plans
        ),
    ]
    return {"placements": cold, "changes": grid, "plans": plans, "rows": rows}


def main() -> None:
    result = run(quick="--quick" in sys.argv[1:])
    width = max(len(r["measure"]) for r in result["rows"])
    for r in result["rows"]:
        print(f"{r['measure']:<{width}}  {r['value']}")


if __name__ == "__main__":
    main()
