"""Wire models of job accounting (`GET /api/v1/usage`, `gpuctl usage`), as Slurm's sacct and sreport show it:
what each finished job used, and the sums per project and user.

GPU-hours are each attempt's GPUs times its run time (started to finished), the numbers fair share weighs
(coordinator/usage.py). Utilization is a time-weighted mean of the device readings (each weighs the seconds
since the one before it) and peak memory the largest reading of any of the job's GPUs; both are None for a
job with no reading (a simulated host, an agent that sends none).
"""

from __future__ import annotations

from shared.wire import Wire

MAX_USAGE_JOBS = 10_000  # finished jobs one answer lists (`--jobs`); the sums count them all


class JobUsage(Wire):
    """One finished job, a line of `gpuctl usage --jobs`."""

    id: str
    name: str
    project: str
    user: str  # who submitted it ("" for a job submitted before the coordinator recorded it)
    state: str  # done, failed, stopped, ...
    submitted_at: float
    started_at: float | None  # None: it never ran
    finished_at: float
    elapsed_s: float  # its first start to its end; 0 if it never ran
    gpus: int  # the GPUs of its last attempt, all nodes together
    attempts: int
    gpu_hours: float
    utilization_pct: float | None = None
    peak_memory_mib: int | None = None


class UsageLine(Wire):
    """One project and user's finished jobs, summed: a line of `gpuctl usage`."""

    project: str
    user: str
    jobs: int
    gpu_hours: float
    utilization_pct: float | None = None  # over all their jobs' readings, time-weighted
    peak_memory_mib: int | None = None


class UsageReport(Wire):
    since: float  # jobs that finished at or after this time (epoch seconds) are counted
    until: float  # when the report was made
    lines: list[UsageLine]  # by project, then user
    total: UsageLine  # every line summed, as project "TOTAL"
    jobs: list[JobUsage] = []  # with `jobs=1`: each job, the latest finished first, at most MAX_USAGE_JOBS
    jobs_left_out: int = 0  # finished jobs counted in the lines but not listed (past MAX_USAGE_JOBS)
