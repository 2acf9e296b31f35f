"""Submit-to-running latency on a real coordinator and agent (in-process, real TLS, real processes):
`python -m bench.submit_latency [JOBS]`. Each job prints the wall clock when it starts; the figure is that
minus the moment `submit` was called, and the time until `logs -f` saw the job complete."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from tests.harness import cluster


async def measure(jobs_n: int) -> None:
    async with cluster() as c:
        c.start_agent("bench-host", "8xH100:80GB")
        await asyncio.sleep(0.5)
        to_running, to_done = [], []
        for _ in range(jobs_n):
            submitted = time.time()
            job = await c.submit("commands: ['date +%s.%N']\nresources: {gpu: 1}")
            log = await c.full_log(job.id)
            to_done.append(time.time() - submitted)
            to_running.append(float(log.split()[0]) - submitted)
    for name, values in (("submit -> running", to_running), ("submit -> logs complete", to_done)):
        values.sort()
        p95 = values[int(len(values) * 0.95) - 1]
        print(
            f"{name}: p50 {statistics.median(values) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms ({len(values)} jobs)"
        )


if __name__ == "__main__":
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 50))
