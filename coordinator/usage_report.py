"""`gpuctl usage`: what the jobs that finished in a window used, per job and summed per project and user.

GPU-hours come from `allocation_spans`, the spans fair share weighs (coordinator/usage.py), undecayed; an
allocation of a finished job that has no end stored yet (its host went silent) counts up to the report's time,
as fair share counts it while it runs. Utilization and peak memory come from the readings that
coordinator/accounting.py stored: those still in its memory (at most `readings_save_s` old) are not in the report
yet. A job counts in the window its end falls in, all its attempts with it.

A report reads every job of its window: 20,000 finished jobs took 290-370 ms on the event loop, holding every
sync meanwhile. It runs in a thread on a read-only connection of its own (WAL lets both read at once): the loop
then waits at most 20-40 ms at a time, the GIL's share (85-95 ms on two cores three times oversubscribed;
python -m bench.accounting).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from coordinator.db import Connection, Row
from coordinator.queue_policy import gpu_hours
from coordinator.store import Store
from coordinator.usage import allocation_spans
from shared.accounting import MAX_USAGE_JOBS, JobUsage, UsageLine, UsageReport

_FINISHED = "finished_at >= ? AND (? IS NULL OR project=?) AND (? IS NULL OR submitted_by=?)"


@dataclass
class _Use:
    """Sums over a job's allocations, then over jobs."""

    jobs: int = 1
    gpu_hours: float = 0.0
    peak_memory_mib: int | None = None
    utilization_pct_s: float = 0.0
    utilization_s: float = 0.0

    def add(self, other: _Use) -> None:
        """`other` counted in: another allocation of the job (jobs=0), or another job."""
        self.jobs += other.jobs
        self.gpu_hours += other.gpu_hours
        if other.peak_memory_mib is not None:
            self.peak_memory_mib = max(self.peak_memory_mib or 0, other.peak_memory_mib)
        self.utilization_pct_s += other.utilization_pct_s
        self.utilization_s += other.utilization_s

    @property
    def utilization_pct(self) -> float | None:
        return self.utilization_pct_s / self.utilization_s if self.utilization_s > 0 else None


def usage_report(
    store: Store, since: float, now: float, project: str | None, user: str | None, list_jobs: bool
) -> UsageReport:
    """The jobs that finished since `since` (of `project` and `user` alone, when given), summed per project and
    user; each listed too with `list_jobs`, the latest finished first. Reads the store through a connection of
    its own: safe in any thread."""
    with store.reader() as db:
        return _report(db, since, now, project, user, list_jobs)


def _report(
    db: Connection, since: float, now: float, project: str | None, user: str | None, list_jobs: bool
) -> UsageReport:
    args = (since, project, project, user, user)
    jobs = db.execute(
        "SELECT id, name, project, submitted_by, status, submitted_at, started_at, finished_at FROM jobs"
        f" WHERE {_FINISHED} ORDER BY finished_at DESC",
        args,
    ).fetchall()
    job_filter = f"a.job_id IN (SELECT id FROM jobs WHERE {_FINISHED})"
    uses, shape = _job_uses(db, job_filter, args, now)
    lines: dict[tuple[str, str], _Use] = defaultdict(lambda: _Use(jobs=0))
    total = _Use(jobs=0)
    for job in jobs:
        use = uses[job["id"]]
        lines[(job["project"], job["submitted_by"])].add(use)
        total.add(use)
    listed = [_job_usage(j, uses[j["id"]], shape.get(j["id"], (0, 0))) for j in jobs] if list_jobs else []
    return UsageReport(
        since=since,
        until=now,
        lines=[_line(project, user, use) for (project, user), use in sorted(lines.items())],
        total=_line("TOTAL", "", total),
        jobs=listed[:MAX_USAGE_JOBS],
        jobs_left_out=max(len(listed) - MAX_USAGE_JOBS, 0),
    )


def _job_uses(
    db: Connection, job_filter: str, args: tuple[object, ...], now: float
) -> tuple[dict[str, _Use], dict[str, tuple[int, int]]]:
    """Each job's use over its allocations, and its shape: (attempts, GPUs of its last attempt)."""
    readings = {
        r["allocation_id"]: r
        for r in db.execute(
            "SELECT r.* FROM allocation_readings r JOIN allocations a ON a.id = r.allocation_id"
            f" WHERE {job_filter}",
            args,
        ).fetchall()
    }
    uses: dict[str, _Use] = defaultdict(_Use)  # by job id
    attempt_gpus: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for span in allocation_spans(db, job_filter, args):
        attempt_gpus[span["job_id"]][span["attempt"]] += span["gpus"]
        if span["started_at"] is not None:
            end = span["finished_at"] if span["finished_at"] is not None else now
            uses[span["job_id"]].gpu_hours += gpu_hours(span["gpus"], span["started_at"], end)
        reading = readings.get(span["id"])
        if reading is not None:
            uses[span["job_id"]].add(
                _Use(
                    0, 0.0, reading["peak_memory_mib"], reading["utilization_pct_s"], reading["utilization_s"]
                )
            )
    shape = {job_id: _last_attempt(by) for job_id, by in attempt_gpus.items()}
    return uses, shape


def _last_attempt(gpus_by_attempt: dict[int, int]) -> tuple[int, int]:
    """(attempts, GPUs of the last one) from the GPUs of each attempt."""
    last = max(gpus_by_attempt)
    return last, gpus_by_attempt[last]


def _job_usage(job: Row, use: _Use, shape: tuple[int, int]) -> JobUsage:
    started = job["started_at"]
    return JobUsage(
        id=job["id"],
        name=job["name"],
        project=job["project"],
        user=job["submitted_by"],
        state=job["status"],
        submitted_at=job["submitted_at"],
        started_at=started,
        finished_at=job["finished_at"],
        elapsed_s=job["finished_at"] - started if started is not None else 0.0,
        gpus=shape[1],
        attempts=shape[0],
        gpu_hours=use.gpu_hours,
        utilization_pct=use.utilization_pct,
        peak_memory_mib=use.peak_memory_mib,
    )


def _line(project: str, user: str, use: _Use) -> UsageLine:
    return UsageLine(
        project=project,
        user=user,
        jobs=use.jobs,
        gpu_hours=use.gpu_hours,
        utilization_pct=use.utilization_pct,
        peak_memory_mib=use.peak_memory_mib,
    )
