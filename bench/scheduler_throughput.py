"""How fast one scheduling pass places a queue: `python -m bench.scheduler_throughput [HOSTS] [JOBS] [islands]`.

Builds HOSTS simulated 8xH100 hosts (half cut in blocks of 1 GPU, half in blocks of 2; GPUs on two NUMA
nodes) and a queue of JOBS jobs asking 1, 2, 4 or 8 GPUs, then times `schedule()` (the pure function the
coordinator calls on every submit and every job end). With `islands`, every host's GPUs also form two
NVLink islands of 4 under four PCIe roots, so placement by topology has all its levels to weigh. Prints
the pass time and jobs considered per second.
"""

from __future__ import annotations

import sys
import time

import msgspec

from agent.blocks import make_blocks
from agent.detect.simulate import parse_simulated_gpus
from coordinator.scheduler import HostCapacity, PendingJob, schedule
from shared.spec import GpuRequest, Range, Resources, TaskSpec
from shared.wire import Inventory


def host(i: int, islands: bool = False) -> HostCapacity:
    gpus = parse_simulated_gpus("8xH100:80GB")
    if islands:
        gpus = tuple(
            msgspec.structs.replace(
                g,
                links=tuple(p for p in range(8) if p != g.index and p // 4 == g.index // 4),
                pcie_root=f"pci0000:{g.index // 2:02x}",
            )
            for g in gpus
        )
    blocks = make_blocks(gpus, tuple(range(64)), 1024 * 1024, 1024 * 1024, "auto" if i % 2 else 4)
    inventory = Inventory(f"h{i}", 64, 1024 * 1024, 1024 * 1024, gpus, blocks, simulated=True)
    return HostCapacity(f"h{i}", f"h{i}", inventory)


def job(i: int) -> PendingJob:
    count = (1, 2, 4, 8)[i % 4]
    spec = TaskSpec(commands=("true",), resources=Resources(gpu=GpuRequest(count=Range(count, count))))
    return PendingJob(f"j{i}", spec, i, priority=i % 3)


def main(hosts_n: int = 500, jobs_n: int = 5000, islands: bool = False) -> None:
    hosts = [host(i, islands) for i in range(hosts_n)]
    jobs = [job(i) for i in range(jobs_n)]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        result = schedule(jobs, hosts)
        best = min(best, time.perf_counter() - started)
    print(
        f"{hosts_n} hosts{' (NVLink islands)' if islands else ''}, {jobs_n} pending jobs: one pass {best * 1000:.0f} ms "
        f"({jobs_n / best:,.0f} jobs/s), placed {len(result.placements)}, pending {len(result.pending)}"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]), islands="islands" in sys.argv[3:])
