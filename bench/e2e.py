"""(c) End to end: trivial jobs (`true`, 1 GPU each) through a real coordinator, real mTLS and real agents
with the plain-process runtime, on one simulated 8-GPU host and on many; submitted from a shell loop of
`gpuctl submit -d` (as a user would) and as one job array.

Figures come from the jobs' own timestamps, which the coordinator keeps: submit-to-running is `started_at`
(the agent saw the process start) minus `submitted_at`; jobs completed per second is the count over the
span from the first submit call to the last job's `finished_at`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.cluster import AGENTS_PER_PROCESS, Cluster, gpuctl_cluster
from bench.report import percentile
from cli.api import Api
from shared.wire import JobView

POLL_S = 0.5  # how often the bench asks whether the jobs are done: it does not time anything by it


@dataclass(frozen=True)
class Workload:
    """What one row of (c) or (d) measured."""

    label: str
    jobs: int
    submit_s: float  # the shell loop's, or the one array call's, wall time
    latencies_s: list[float]  # submit-to-running, one per job that ran
    span_s: float  # first submit call to the last job's end
    failed: int

    def row(self) -> dict[str, object]:
        return {
            "run": self.label,
            "jobs": self.jobs,
            "submit_s": self.submit_s,
            "jobs_per_s": self.jobs / self.span_s if self.span_s > 0 else None,
            "p50_ms": percentile(self.latencies_s, 50) * 1000 if self.latencies_s else None,
            "p99_ms": percentile(self.latencies_s, 99) * 1000 if self.latencies_s else None,
            "failed": self.failed,
        }


def run(
    jobs: int = 1000, loop_jobs: int = 1000, many_hosts: int = 100, database: Callable[[], str] | None = None
) -> dict[str, object]:
    """One host, then `many_hosts`: a shell loop of `loop_jobs` submits, then an array of `jobs`. Each
    cluster's coordinator keeps its state in a new database from `database` (default: SQLite)."""
    rows: list[dict[str, object]] = []
    arrays = True
    for hosts in (1, many_hosts):
        where = "1 host" if hosts == 1 else f"{hosts} hosts"
        with gpuctl_cluster(hosts, database() if database else "") as cluster:
            rows.append(shell_loop(cluster, loop_jobs, f"gpuctl {where}, loop").row())
            arrays = has_array(cluster)
            if arrays:
                rows.append(array(cluster, jobs, f"gpuctl {where}, array").row())
    result: dict[str, object] = {"rows": rows, "agents_per_process": AGENTS_PER_PROCESS}
    if not arrays:
        result["status"] = "arrays not run: no --array"
    return result


def shell_loop(cluster: Cluster, n: int, label: str) -> Workload:
    """`n` sequential `gpuctl submit -d` calls from bash, each a fresh CLI process."""
    script = f'for i in $(seq {n}); do gpuctl submit -d -f "$1" >/dev/null || exit 1; done'
    return _measure(cluster, n, label, ["bash", "-c", script, "loop", str(cluster.spec_path)])


def array(cluster: Cluster, n: int, label: str) -> Workload:
    """One `gpuctl submit -d --array 1-n` call."""
    command = ["gpuctl", "submit", "-d", "--array", f"1-{n}", "-f", str(cluster.spec_path)]
    return _measure(cluster, n, label, command)


def has_array(cluster: Cluster) -> bool:
    out = subprocess.run(["gpuctl", "submit", "--help"], env=cluster.env, capture_output=True, text=True)
    return "--array" in out.stdout


def _measure(cluster: Cluster, n: int, label: str, command: list[str]) -> Workload:
    before = {j.id for j in cluster.api.jobs(True)}
    started = time.time()
    subprocess.run(command, env=cluster.env, check=True, stdout=subprocess.DEVNULL)
    submit_s = time.time() - started
    jobs = wait_done(cluster.api, before, n, timeout_s=120 + n)
    latencies = [j.started_at - j.submitted_at for j in jobs if j.started_at is not None]
    last_end = max((j.finished_at or 0.0) for j in jobs)
    failed = sum(j.status != "done" for j in jobs)
    return Workload(label, n, submit_s, latencies, last_end - started, failed)


def wait_done(api: Api, before: set[str], n: int, timeout_s: float) -> list[JobView]:
    """The `n` jobs that are not in `before`, once none of them is queued or running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not [j for j in api.jobs(False) if j.id not in before]:
            jobs = tasks_of(api, [j for j in api.jobs(True) if j.id not in before])
            if len(jobs) >= n:
                return jobs
        time.sleep(POLL_S)
    raise TimeoutError(f"{n} jobs not done after {timeout_s:.0f} s")


def tasks_of(api: Api, views: list[JobView]) -> list[JobView]:
    """Every job, with an array's tasks in place of the one view that folds them (as `gpuctl ps` shows it)."""
    out = []
    for view in views:
        if getattr(view, "array", None) is None:
            out.append(view)
        else:
            out += api.tasks(view.id, True)
    return out
