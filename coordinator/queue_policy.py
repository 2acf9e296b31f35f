"""The queue's policy between projects, pure: per-project quotas (which waiting jobs the scheduler may see)
and fair share (how a project's recent GPU-hours order its jobs).

A quota is an eligibility rule, like an array's `%N` limit (arrays.py): the waiting jobs of a project go to
the scheduler in queue order (priority, then age) while its placed jobs and those let in before them stay
within its quota; the first that would take it over is held with the reason, and so is every later one, so
that a small job never overtakes a bigger one of its own project by its quota. Nothing is refused at submit.

Fair share orders jobs of equal priority between projects: a project's usage is its allocations' GPUs times
their run time, in GPU-hours, each hour weighing half as much every half-life that passed since. Its factor
is Slurm's classic `2^(-usage / mean usage)` over the projects that used anything: 1.0 for an idle project,
0.5 for one at the mean; the higher factor goes first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


@dataclass(frozen=True)
class Quota:
    gpus: int | None = None  # at most this many GPUs held by its placed jobs; None: no limit
    jobs: int | None = None  # at most this many jobs placed at once; None: no limit


@dataclass(frozen=True)
class ProjectLoad:
    gpus: int = 0  # GPUs held by its placed jobs (assigned, pulling, running)
    jobs: int = 0


class Queued(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def project(self) -> str: ...


Q = TypeVar("Q", bound=Queued)


def within_quotas(
    jobs: Sequence[Q],
    gpus_of: Mapping[str, int],
    quotas: Mapping[str, Quota],
    loads: Mapping[str, ProjectLoad],
) -> tuple[list[Q], dict[str, str]]:
    """The jobs (given in queue order) the scheduler may place now, and the reason of each job held back
    (by id). `gpus_of`: the GPUs each job holds once placed. Jobs of projects without a quota always pass."""
    room = dict(loads)
    stopped: dict[str, str] = {}  # project -> the reason its first held job gave
    eligible: list[Q] = []
    held: dict[str, str] = {}
    for job in jobs:
        quota = quotas.get(job.project)
        if quota is None:
            eligible.append(job)
            continue
        if job.project not in stopped:
            load = room.get(job.project, ProjectLoad())
            why = over_quota(job.project, quota, load, gpus_of.get(job.id, 0))
            if not why:
                room[job.project] = ProjectLoad(load.gpus + gpus_of.get(job.id, 0), load.jobs + 1)
                eligible.append(job)
                continue
            stopped[job.project] = why
        held[job.id] = stopped[job.project]
    return eligible, held


def over_quota(project: str, quota: Quota, load: ProjectLoad, gpus: int) -> str:
    """Why one more job holding `gpus` GPUs would take the project over its quota, or "" if it would not."""
    if quota.jobs is not None and load.jobs + 1 > quota.jobs:
        return f"project {project} is at its quota: {load.jobs} of {quota.jobs} running jobs"
    if quota.gpus is not None and gpus and load.gpus + gpus > quota.gpus:
        if load.gpus >= quota.gpus:
            return f"project {project} is at its quota: {load.gpus} of {quota.gpus} GPUs"
        return (
            f"project {project} is at its quota: {load.gpus} of {quota.gpus} GPUs in use, "
            f"this job needs {gpus}"
        )
    return ""


# --- fair share -----------------------------------------------------------------------------------------


def gpu_hours(gpus: int, start: float, end: float) -> float:
    """GPU-hours of `gpus` GPUs held from `start` to `end` (seconds), undecayed: what `gpuctl usage` shows of
    the span that `decayed_gpu_hours` weighs (the two agree as the half-life grows)."""
    return gpus * max(end - start, 0.0) / 3600.0


def decayed_gpu_hours(gpus: int, start: float, end: float, now: float, half_life_s: float) -> float:
    """GPU-hours of `gpus` GPUs held from `start` to `end` (seconds), as they weigh at `now`: each moment
    weighs 2^(-(now - moment) / half_life). The integral, exactly: no stepping."""
    if end <= start or gpus <= 0:
        return 0.0
    rate = math.log(2) / half_life_s
    weight = (math.exp(-rate * (now - end)) - math.exp(-rate * (now - start))) / rate
    return gpus * weight / 3600.0


def decay(usage: float, elapsed_s: float, half_life_s: float) -> float:
    """`usage` as it weighs `elapsed_s` later."""
    return usage * 0.5 ** (elapsed_s / half_life_s)


def fair_share_factors(usage: Mapping[str, float]) -> dict[str, float]:
    """Each project's factor from its decayed GPU-hours: 2^(-usage / mean), the mean over projects that used
    anything. A project absent from `usage` (or with none) has 1.0."""
    used = [u for u in usage.values() if u > 0]
    if not used:
        return {project: 1.0 for project in usage}
    mean = sum(used) / len(used)
    return {project: 0.5 ** (u / mean) for project, u in usage.items()}


class Usage:
    """Decayed GPU-hours per project of the allocations that ended, kept as of one time and decayed forward
    on each step; a running allocation's share is added fresh by whoever asks (its end is not known yet)."""

    def __init__(self, half_life_s: float, now: float) -> None:
        self.half_life_s = half_life_s
        self.at = now
        self.ended: dict[str, float] = {}

    def advance(self, now: float) -> None:
        if now > self.at:
            self.ended = {p: decay(u, now - self.at, self.half_life_s) for p, u in self.ended.items()}
            self.at = now

    def add_ended(self, project: str, gpus: int, start: float, end: float) -> None:
        used = decayed_gpu_hours(gpus, start, end, self.at, self.half_life_s)
        self.ended[project] = self.ended.get(project, 0.0) + used

    def with_running(self, running: Iterable[tuple[str, int, float]]) -> dict[str, float]:
        """Usage as of now counting the running allocations too: (project, GPUs, started at)."""
        total = dict(self.ended)
        for project, gpus, start in running:
            used = decayed_gpu_hours(gpus, start, self.at, self.at, self.half_life_s)
            total[project] = total.get(project, 0.0) + used
        return total
