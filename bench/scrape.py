"""One `/metrics` scrape at fleet size: `python -m bench.scrape [HOSTS] [JOBS]` (10,000 and 20,000).

A coordinator with HOSTS simulated 8xH100 hosts (8 blocks each, written straight into its store), a device
reading of each of their GPUs (as their syncs bring them), and JOBS jobs in 20 projects (the scheduler places
what fits, the rest waits); then the scrape's body is made SCRAPES times, as `GET /metrics` makes it, on the
event loop (the device families' text in a worker thread, from a snapshot taken on the loop). Prints the median
and worst time of the whole body and of its parts that grow with the fleet: the state reads (jobs, hosts,
blocks), and the device families' snapshot and text.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from prometheus_client import generate_latest

from agent.detect.simulate import simulated_readings
from bench.scheduler import host
from coordinator.readings_metrics import device_snapshot, device_text
from coordinator.server import ServerConfig, start_coordinator
from coordinator.service import Coordinator
from shared.spec import GpuRequest, Range, Resources, TaskSpec
from shared.wire import SyncRequest

SCRAPES = 20
PROJECTS = 20


def _fill(c: Coordinator, hosts_n: int, jobs_n: int) -> None:
    rows = []
    for i in range(hosts_n):
        inventory = host(i).inventory
        rows.append((f"h{i}", f"h{i}", msgspec.json.encode(inventory).decode(), f"g{i}", time.time()))
    with c.store.tx() as db:
        db.executemany(
            "INSERT INTO hosts(id, name, inventory, generation, created_at) VALUES (?,?,?,?,?)", rows
        )
    _read_devices(c)
    for p in range(PROJECTS):
        c.accounts.create_project(f"p{p}")
    for i in range(jobs_n):
        spec = TaskSpec(commands=("true",), resources=Resources(gpu=GpuRequest(count=Range(4, 4))))
        c.submit(spec, f"p{i % PROJECTS}")
    c.schedule_pass()


def _read_devices(c: Coordinator) -> None:
    """One sync's reading of every GPU of every host, as the agents of a simulated fleet send them."""
    for row in c.store.list_hosts():
        assert row.inventory is not None
        readings = list(simulated_readings(row.inventory.gpus, {0, 1, 2, 3}, time.time()))
        request = SyncRequest(agent_version="bench", inventory_generation=row.generation, readings=readings)
        c.device_readings.note(row, request, time.time())


def _times_ms(action: Callable[[], object]) -> tuple[float, float]:
    times = []
    for _ in range(SCRAPES):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


async def run(hosts_n: int, jobs_n: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory() as root:
        running = await start_coordinator(ServerConfig(Path(root), "127.0.0.1", 0))
        try:
            c = running.coordinator
            _fill(c, hosts_n, jobs_n)
            snapshot = device_snapshot(c)
            return {
                "scrape": _times_ms(
                    lambda: generate_latest(c.meters.registry) + device_text(device_snapshot(c)).encode()
                ),
                "jobs by state and project": _times_ms(c.store.job_counts),
                "hosts by state": _times_ms(c.host_states),
                "blocks per fleet": _times_ms(c.live.blocks_by_fleet),
                "devices' snapshot (the loop)": _times_ms(lambda: device_snapshot(c)),
                "devices' text (a thread)": _times_ms(lambda: device_text(snapshot)),
            }
        finally:
            await running.close()


def main() -> None:
    hosts_n, jobs_n = (int(a) for a in (sys.argv[1:] + ["10000", "20000"][len(sys.argv[1:]) :])[:2])
    for name, (median_ms, worst_ms) in asyncio.run(run(hosts_n, jobs_n)).items():
        print(f"{name:<28} median {median_ms:7.2f} ms   worst {worst_ms:7.2f} ms")


if __name__ == "__main__":
    main()
