"""Backfill with reservations (coordinator/backfill.py): the blocks planned for a waiting job are never held
past its estimated start by a job behind it, and a stream of small jobs no longer starves a large one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.api import Api
from coordinator.backfill import Reservation, Reserved
from coordinator.live_schedule import LiveSchedule
from coordinator.scheduler import HostCapacity, PendingJob, fit, matching_blocks, reserve, schedule
from shared.spec import GpuRequest, Range, Resources, TaskSpec, parse_spec, validate_spec
from shared.wire import JobView
from tests.harness import Cluster, cluster, reachable_tmpdir
from tests.test_arrays import cli
from tests.test_scheduler import PRIORITY, host, hosts_strategy, inventory

NOW = 1_000_000.0
MAX_DURATION = st.sampled_from((None, 60, 600, 3600))
END = st.sampled_from(
    (None, NOW - 60, NOW + 300, NOW + 1800, NOW + 7200)
)  # None: its job has no max_duration
GPU = st.sampled_from(
    (None, GpuRequest(count=Range(1, 1)), GpuRequest(count=Range(2, 2)), GpuRequest(count=Range(4, 4)))
)


def spec_of(
    gpus: int | None, max_duration_s: int | None = None, nodes: int = 1, priority: int = 0
) -> TaskSpec:
    gpu = GpuRequest(count=Range(gpus, gpus)) if gpus else None
    spec = TaskSpec(
        commands=("true",), resources=Resources(gpu=gpu), max_duration_s=max_duration_s, priority=priority
    )
    return msgspec.structs.replace(validate_spec(spec), nodes=nodes)


@st.composite
def queues(draw: st.DrawFn, first_seq: int, most: int) -> list[PendingJob]:
    jobs = []
    for seq in range(first_seq, first_seq + draw(st.integers(1, most))):
        resources = Resources(gpu=draw(GPU))
        priority = draw(PRIORITY)
        spec = TaskSpec(
            commands=("true",), resources=resources, max_duration_s=draw(MAX_DURATION), priority=priority
        )
        spec = msgspec.structs.replace(validate_spec(spec), nodes=draw(st.sampled_from((1, 1, 1, 2))))
        jobs.append(PendingJob(f"j{seq}", spec, seq, priority))
    return jobs


@st.composite
def ends_of(draw: st.DrawFn, hosts: list[HostCapacity]) -> dict[str, dict[int, float]]:
    """Each busy block's estimated end, or none (its job has no max_duration)."""
    ends: dict[str, dict[int, float]] = {}
    for h in hosts:
        for b in sorted(h.busy_blocks):
            end = draw(END)
            if end is not None:
                ends.setdefault(h.host_id, {})[b] = end
    return ends


@settings(max_examples=300, deadline=None)
@given(
    hosts=hosts_strategy(),
    queue=queues(0, 8),
    arrivals=queues(100, 6),
    data=st.data(),
    depth=st.sampled_from((1, 2, 16)),
)
def test_backfill_never_delays_a_reserved_job(
    hosts: list[HostCapacity],
    queue: list[PendingJob],
    arrivals: list[PendingJob],
    data: st.DataObject,
    depth: int,
) -> None:
    """As the coordinator runs it: a pass places what fits, the reservations are planned for the jobs left
    waiting, then jobs arrive (anywhere in the queue's order) and a pass places by the reservations. Every
    reserved block is then free, or held by a running job that ends by the reserved start, or by a job placed
    now that ends by then (now + its max_duration), or by the reserved job itself; only a job that arrived
    ahead of the reserved one (a higher priority) may take it for longer."""
    hosts = [replace(h, ready=True) if i == 0 else h for i, h in enumerate(hosts)]
    ends = data.draw(ends_of(hosts))
    first = schedule(queue, hosts)
    hosts = _after(hosts, first.placements)
    for p in first.placements:  # running now: they end by their max_duration, if they have one
        duration = next(j.spec.max_duration_s for j in queue if j.job_id == p.job_id)
        if duration is not None:
            ends.setdefault(p.host_id, {}).update((b, NOW + duration) for b in p.blocks)
    waiting = [j for j in queue if j.job_id in first.pending]
    reservations = reserve(waiting, hosts, ends, NOW, depth)
    _check_plan(reservations, hosts, ends, depth, waiting)

    jobs = {j.job_id: j for j in waiting + arrivals}
    result = schedule(list(jobs.values()), hosts, Reserved(reservations, NOW))

    holder = {(p.host_id, b): jobs[p.job_id] for p in result.placements for b in p.blocks}
    busy = {(h.host_id, b) for h in hosts for b in h.busy_blocks}
    for r in reservations:
        for host_id, _, blocks in r.nodes:
            for b in blocks:
                if (host_id, b) in busy:  # the plan waits for it to end
                    assert r.start is None or ends[host_id][b] <= r.start
                job = holder.get((host_id, b))
                if job is None or job.job_id == r.job_id:
                    continue
                duration = job.spec.max_duration_s
                ends_in_time = duration is not None and r.start is not None and NOW + duration <= r.start
                arrived_ahead = job in arrivals and job.order() < r.order
                assert ends_in_time or arrived_ahead, (r, job.job_id, duration)


def _check_plan(
    reservations: list[Reservation],
    hosts: list[HostCapacity],
    ends: dict[str, dict[int, float]],
    depth: int,
    waiting: list[PendingJob],
) -> None:
    """At most `depth`, each on ready hosts with the blocks the job takes there, none sharing a block, one
    host per node, in queue order."""
    assert len(reservations) <= depth
    ready = {h.host_id for h in hosts if h.ready}
    taken = [(host_id, b) for r in reservations for host_id, _, blocks in r.nodes for b in blocks]
    assert len(taken) == len(set(taken))
    by_id = {j.job_id: j for j in waiting}
    inventories = {h.host_id: h.inventory for h in hosts}
    for r in reservations:
        spec = by_id[r.job_id].spec
        assert len(r.nodes) == spec.nodes == len({h for h, _, _ in r.nodes})
        assert {h for h, _, _ in r.nodes} <= ready
        for host_id, _, blocks in r.nodes:  # as many blocks as the job takes there, all of the kind it asks
            assert len(blocks) == fit(spec, inventories[host_id])
            assert set(blocks) <= matching_blocks(spec.resources.gpu, inventories[host_id])
    assert [r.order for r in reservations] == sorted(r.order for r in reservations)


def _after(hosts: list[HostCapacity], placements: list) -> list[HostCapacity]:
    taken: dict[str, set[int]] = {}
    for p in placements:
        taken.setdefault(p.host_id, set()).update(p.blocks)
    return [replace(h, busy_blocks=h.busy_blocks | frozenset(taken.get(h.host_id, ()))) for h in hosts]


# --- a stream of 1-GPU jobs and one 8-GPU job ---------------------------------------------------------


@dataclass
class Stream:
    """One 8-GPU host; a 1-GPU job arrives every `every_s` and runs `run_s` (its max_duration, if it has
    one), so the host is always nearly full; an 8-GPU job arrives at `big_at`. Simulated time, the
    coordinator's steps: settle, plan the reservations, settle."""

    depth: int
    max_duration_s: int | None
    every_s: int = 75
    run_s: int = 600
    big_at: float = NOW + 610
    live: LiveSchedule = field(default_factory=LiveSchedule)
    running: dict[str, tuple[tuple[int, ...], float, int | None]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    reserved: list[Reservation] = field(default_factory=list)  # in force

    def __post_init__(self) -> None:
        self.host = HostCapacity("id-h", "h", inventory("h", 8))
        self.live.sync([], [self.host], {})

    def run(self, until_s: float, step_s: float = 15.0) -> None:
        now = NOW
        while now < NOW + until_s:
            self._end(now)
            if (now - NOW) % self.every_s < step_s:
                self._submit(spec_of(1, self.max_duration_s), now)
            if self.big_at <= now < self.big_at + step_s:
                self._submit(spec_of(8, 3600), now, "big")
            self._settle(now)
            ends = {"id-h": {b: at + d for blocks, at, d in self.running.values() if d for b in blocks}}
            self.reserved = self.live.plan(ends, now, self.depth)
            self.live.set_reservations(self.reserved, now + step_s)  # judged as at the next plan, as
            self._settle(now)  # the coordinator judges them as at its next beat
            now += step_s

    def _submit(self, spec: TaskSpec, now: float, job_id: str = "") -> None:
        self.seq += 1
        self.live.add_job(PendingJob(job_id or f"s{self.seq}", spec, self.seq))

    def _settle(self, now: float) -> None:
        for p in self.live.settle().placements:
            duration = 3600 if p.job_id == "big" else self.max_duration_s
            self._check(p.job_id, p.blocks, now, duration)
            self.running[p.job_id] = (p.blocks, now, duration)
            self.started[p.job_id] = now
        self._set_host()

    def _end(self, now: float) -> None:
        for job_id, (_, at, _) in list(self.running.items()):
            if now >= at + (3600 if job_id == "big" else self.run_s):
                del self.running[job_id]
        self._set_host()

    def _set_host(self) -> None:
        busy = frozenset(b for blocks, _, _ in self.running.values() for b in blocks)
        self.live.set_host(replace(self.host, busy_blocks=busy))

    def _check(self, job_id: str, blocks: tuple[int, ...], now: float, duration: int | None) -> None:
        """A job placed on blocks reserved for another ends by its start (the small ones are all behind)."""
        for r in self.reserved:
            if r.job_id != job_id and set(blocks) & set(r.nodes[0][2]):
                assert duration is not None and r.start is not None and now + duration <= r.start


def test_an_8_gpu_job_is_not_starved_by_a_stream_of_1_gpu_jobs() -> None:
    """With reservations the 8-GPU job starts once the 1-GPU jobs running when it came have ended (their
    max_duration is known: by then; unknown: as they end); with backfill switched off (depth 0) each freed
    block goes to the next 1-GPU job, and a whole simulated day passes without it starting."""
    for max_duration_s in (600, None):
        starved = Stream(depth=0, max_duration_s=max_duration_s)
        starved.run(until_s=86400)
        assert "big" not in starved.started
        assert len(starved.started) > 1000  # the small jobs ran all day

        reserved = Stream(depth=16, max_duration_s=max_duration_s)
        reserved.run(until_s=86400)
        assert reserved.started["big"] <= reserved.big_at + reserved.run_s
        assert len(reserved.started) > 900  # and the small ones ran before and after it


def test_short_jobs_backfill_onto_reserved_blocks_until_the_reserved_start() -> None:
    """Blocks free now but reserved for an 8-GPU job that starts in 10 minutes: a 1-GPU job whose
    max_duration ends before then takes one; one without max_duration, or a longer one, waits and says why."""
    h = host("h", busy=range(4))
    big = PendingJob("big", spec_of(8), 1)
    ends = {"id-h": dict.fromkeys(range(4), NOW + 600)}
    (reservation,) = reserve([big], [h], ends, NOW, 16)
    assert reservation.start == NOW + 600 and reservation.nodes == (("id-h", "h", tuple(range(8))),)
    short = PendingJob("short", spec_of(1, 300), 2)
    endless = PendingJob("endless", spec_of(1), 3)
    long = PendingJob("long", spec_of(1, 3600), 4)

    result = schedule([big, short, endless, long], [h], Reserved([reservation], NOW))

    assert [p.job_id for p in result.placements] == ["short"]
    assert result.pending["big"] == "no host with 8 free blocks; largest free: 3; blocks reserved on h"
    assert result.pending["endless"] == (
        "no host with 1 free blocks; largest free: 0; free blocks are reserved for a job ahead "
        "(a max_duration would let it run before it)"
    )
    assert result.pending["long"].endswith("which is due to start before this one's max_duration ends")
    # A job ahead of the reserved one (a higher priority) may take its blocks.
    urgent = PendingJob("urgent", spec_of(1, priority=100), 5, priority=100)
    assert [p.job_id for p in schedule([big, urgent], [h], Reserved([reservation], NOW)).placements] == [
        "urgent"
    ]


def test_a_multi_node_job_is_reserved_on_hosts_of_one_fleet() -> None:
    """The fleet whose latest node frees soonest; a host of another fleet never joins it."""
    hosts = [
        replace(host("a", busy=range(8)), cluster=True),
        replace(host("b", busy=range(8)), cluster=True),
        replace(host("c", busy=range(8)), fleet="other", cluster=True),
    ]
    ends = {"id-a": dict.fromkeys(range(8), NOW + 900), "id-b": dict.fromkeys(range(8), NOW + 1800)}
    ends["id-c"] = dict.fromkeys(range(8), NOW + 60)
    gang = PendingJob("g", spec_of(8, nodes=2), 1)

    (r,) = reserve([gang], hosts, ends, NOW, 16)

    assert [(h, name) for h, name, _ in r.nodes] == [("id-a", "a"), ("id-b", "b")]
    assert r.start == NOW + 1800
    del ends["id-b"][3]  # a job there has no max_duration: its end, and so the start, is unknown
    assert reserve([gang], hosts, ends, NOW, 16)[0].start is None


def test_the_plan_is_owed_a_new_look_when_a_reserved_job_leaves_or_a_job_waits_ahead_of_it() -> None:
    """What makes the coordinator plan again between beats: not a job that comes to wait behind the
    planned ones, but one ahead of them, or a reserved job leaving the queue (its blocks are free to the
    others at once)."""
    h = host("h", busy=range(8))
    ends = {"id-h": dict.fromkeys(range(8), NOW + 600)}
    live = LiveSchedule()
    live.sync([PendingJob(f"w{i}", spec_of(8), i) for i in range(3)], [h], {})
    live.settle()
    reservations = live.plan(ends, NOW, 2)  # reads w0 and w1: w0 holds the host
    assert [r.job_id for r in reservations] == ["w0"]
    live.set_reservations(reservations, NOW)
    live.add_job(PendingJob("later", spec_of(1), 10))
    live.settle()
    assert not live.replan_wanted
    live.add_job(PendingJob("urgent", spec_of(1, priority=50), 11, priority=50))
    live.settle()
    assert live.replan_wanted
    live.set_reservations(live.plan(ends, NOW, 2), NOW)
    assert not live.replan_wanted and set(live.reserved.by_job) == {"urgent"}  # the host holds one
    live.remove_job("urgent")
    assert live.replan_wanted and live.reserved.by_job == {}


# --- with a real coordinator and agent ------------------------------------------------------------------

HELD = """
name: {name}
resources: {{gpu: {gpus}}}
{limit}
commands:
  - while [ ! -e {gate} ]; do sleep 0.05; done
"""


async def submit_held(api: Api, name: str, gate: Path, gpus: int, max_duration: str = "") -> str:
    """A job that holds its GPUs until `gate` exists; answers its id."""
    limit = f"max_duration: {max_duration}" if max_duration else ""
    spec = parse_spec(HELD.format(name=name, gpus=gpus, limit=limit, gate=gate))
    return (await asyncio.to_thread(api.submit, spec)).id


async def until(c: Cluster, job_id: str, done: Callable[[JobView], bool]) -> JobView:
    async with asyncio.timeout(30):
        while True:
            job = await c.job(job_id)
            if done(job):
                return job
            await asyncio.sleep(0.05)


async def test_a_reserved_job_shows_its_estimated_start_and_a_short_job_backfills(tmp_path: Path) -> None:
    """A 2-GPU job waits behind a 1-GPU job that may run an hour: the free GPU is reserved for it, and `ps`
    and `queue --json` show when it should start; a 1-GPU job without max_duration waits and says why, one
    that ends in half an hour runs on the reserved GPU at once."""
    async with cluster() as c:
        c.start_agent("bf-a", "2xH100:80GB")
        gate = reachable_tmpdir() / "open"
        first = await submit_held(c.api, "hour", gate, 1, "1h")
        await c.wait_for(first, "running")
        big = await submit_held(c.api, "big", gate, 2)
        placed_at = c.coordinator.coordinator.store.latest_allocation(first)
        assert placed_at is not None
        start = placed_at.created_at + 3600
        # planned at once, or at the beat if a plan was just made
        view = await until(c, big, lambda j: j.estimated_start is not None)
        assert view.estimated_start == pytest.approx(start)
        assert view.reason == "no host with 2 free blocks; largest free: 1; blocks reserved on bf-a"
        endless = await submit_held(c.api, "endless", gate, 1)
        await until(c, endless, lambda j: j.reason.endswith("would let it run before it)"))
        short = await submit_held(c.api, "short", gate, 1, "30m")
        await c.wait_for(short, "running")
        assert (await c.job(endless)).status == "pending"

        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "ps")
        assert code == 0 and max(map(len, out.splitlines())) <= 80, out
        assert "estimated" in out and time.strftime("%H:%M UTC", time.gmtime(start)) in " ".join(out.split())
        code, out = await asyncio.to_thread(cli, c.api, tmp_path, "queue", "--json")
        entries = {e["id"]: e for e in json.loads(out)}
        assert entries[big]["estimated_start"] == pytest.approx(start)
        assert entries[endless]["estimated_start"] is None
        gate.touch()
        for job_id in (first, short, big, endless):
            assert (await c.wait_for(job_id, "done", "failed")).status == "done"
