"""The queue's policy between projects (coordinator/queue_policy.py): quotas hold jobs back, never beyond
what the quota leaves room for, and fair share gives two projects equal GPU-hours over a simulated day."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given
from hypothesis import strategies as st

from coordinator.queue_policy import (
    ProjectLoad,
    Quota,
    Usage,
    decayed_gpu_hours,
    fair_share_factors,
    over_quota,
    within_quotas,
)
from coordinator.scheduler import HostCapacity, PendingJob, schedule
from shared.spec import parse_spec
from tests.test_scheduler import inventory

PROJECTS = ("research", "prod", "free")


@dataclass(frozen=True)
class Job:
    id: str
    project: str


COUNT = st.one_of(st.none(), st.integers(0, 6))
QUOTAS = st.dictionaries(st.sampled_from(PROJECTS[:2]), st.builds(Quota, COUNT, COUNT))
LOADS = st.dictionaries(
    st.sampled_from(PROJECTS), st.builds(ProjectLoad, st.integers(0, 8), st.integers(0, 4))
)
JOBS = st.lists(st.tuples(st.sampled_from(PROJECTS), st.integers(0, 4)), max_size=20)


@given(JOBS, QUOTAS, LOADS)
def test_a_quota_lets_in_the_first_jobs_of_its_project_that_fit_it_and_holds_the_rest(
    drawn: list[tuple[str, int]], quotas: dict[str, Quota], loads: dict[str, ProjectLoad]
) -> None:
    jobs = [Job(f"j{i}", project) for i, (project, _) in enumerate(drawn)]
    gpus_of = {f"j{i}": gpus for i, (_, gpus) in enumerate(drawn)}
    eligible, held = within_quotas(jobs, gpus_of, quotas, loads)
    assert [j.id for j in eligible] == [j.id for j in jobs if j.id not in held]  # in order, each once
    for project in PROJECTS:
        mine = [j.id for j in jobs if j.project == project]
        let_in = [j.id for j in eligible if j.project == project]
        assert let_in == mine[: len(let_in)]  # a prefix: nothing overtakes a held job of its project
        quota, load = quotas.get(project), loads.get(project, ProjectLoad())
        if quota is None:
            assert let_in == mine
            continue
        if let_in:  # what it lets in fits the room the placed jobs leave
            assert quota.jobs is None or load.jobs + len(let_in) <= quota.jobs
            gpu_jobs = [gpus_of[j] for j in let_in if gpus_of[j]]
            assert quota.gpus is None or not gpu_jobs or load.gpus + sum(gpu_jobs) <= quota.gpus
        if len(let_in) < len(mine):  # and the first job held would go over it
            first = mine[len(let_in)]
            after = ProjectLoad(load.gpus + sum(gpus_of[j] for j in let_in), load.jobs + len(let_in))
            assert held[first] == over_quota(project, quota, after, gpus_of[first]) != ""


def test_the_reasons_say_which_limit_binds() -> None:
    full = Quota(gpus=16, jobs=100)
    assert over_quota("research", full, ProjectLoad(16, 3), 1) == (
        "project research is at its quota: 16 of 16 GPUs"
    )
    assert over_quota("research", full, ProjectLoad(4, 100), 1) == (
        "project research is at its quota: 100 of 100 running jobs"
    )
    assert over_quota("research", full, ProjectLoad(14, 3), 4) == (
        "project research is at its quota: 14 of 16 GPUs in use, this job needs 4"
    )
    assert over_quota("research", full, ProjectLoad(16, 3), 0) == ""  # a job without GPUs holds none


def test_usage_decays_by_half_each_half_life() -> None:
    day = 86400.0
    assert decayed_gpu_hours(8, 0, 3600, 3600, 7 * day) > 7.98  # an hour of 8 GPUs just now: ~8 GPU-hours
    assert abs(decayed_gpu_hours(8, 0, 3600, 3600 + 7 * day, 7 * day) - 4.0) < 0.01
    usage = Usage(7 * day, now=3600)
    usage.add_ended("research", 8, 0, 3600)
    usage.advance(3600 + 14 * day)
    assert abs(usage.ended["research"] - 2.0) < 0.01
    assert fair_share_factors({"research": 2.0, "prod": 0.0}) == {"research": 0.5, "prod": 1.0}


def test_two_projects_submitting_equal_work_get_equal_gpu_hours_over_a_day() -> None:
    """One 8-GPU host, a day in 5-minute steps of simulated time. Each project submits the same work, more
    than the host can run: a backlog of 200 one-hour, one-GPU jobs at the start, `research` a minute before
    `prod`, then two more every 5 minutes. By age alone `research` would hold the host all day;
    fair share, recomputed each step (as the housekeeping beat does), gives each half."""
    host = HostCapacity("id-h", "h", inventory("h", 8, blocks=8))
    spec = parse_spec("commands: [train]\nresources: {gpu: 1}\n")
    step, day, hour = 300.0, 86400.0, 3600.0
    usage = Usage(half_life_s=7 * day, now=0.0)
    pending: list[PendingJob] = []
    running: dict[str, tuple[str, int, float]] = {}  # job id -> project, block, started at
    got = {"research": 0.0, "prod": 0.0}
    seq, now = 0, 0.0
    while now < day:
        for project in got:
            for _ in range(2 if now else 200):
                seq += 1
                pending.append(PendingJob(f"j{seq}", spec, seq, project=project))
        for job_id, (project, _, started) in list(running.items()):
            if now - started >= hour:
                del running[job_id]
                usage.add_ended(project, 1, started, started + hour)
                got[project] += 1.0
        usage.advance(now)
        now_running = ((project, 1, started) for project, _, started in running.values())
        factors = fair_share_factors(usage.with_running(now_running))
        pending = [replace(j, share=factors.get(j.project, 1.0)) for j in pending]
        busy = frozenset(block for _, block, _ in running.values())
        placed = schedule(pending, [replace(host, busy_blocks=busy)]).placements
        for p in placed:
            job = next(j for j in pending if j.job_id == p.job_id)
            running[p.job_id] = (job.project, p.blocks[0], now)
        pending = [j for j in pending if j.job_id not in running]
        now += step
    for project, _, started in running.values():  # the hours run by the end of the day count too
        got[project] += (day - started) / hour
    assert abs(got["research"] - got["prod"]) <= 0.1 * max(got.values()), got
    assert sum(got.values()) > 0.95 * 8 * 24  # and the host was kept busy
