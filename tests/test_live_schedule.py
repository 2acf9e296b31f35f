"""The scheduler kept between changes (coordinator/live_schedule.py) places exactly what a full pass would.

Random fleets (varied inventories, busy blocks, ready or not, fleets limited to projects, with `placement:
cluster` or not) and random sequences of changes (submits with priorities, ends, stops, hosts going away and
coming back, limits and placements changed, projects' fair-share factors changed at a re-sync, as the
housekeeping beat does, backfill reservations planned again as time passes, over allocations with and
without an estimated end, GPUs held unhealthy and hosts undrained): after each change, its placements and
the reasons its queue shows equal those of `schedule()` run from scratch on the same jobs, hosts and
reservations, its plan equals `reserve()`'s, and no placement takes a block with an unhealthy GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coordinator.backfill import Reserved
from coordinator.health import held_after_report, unhealthy_blocks, with_held
from coordinator.live_schedule import LiveSchedule
from coordinator.safe_schedule import schedule_skipping
from coordinator.scheduler import NO_RESERVATIONS, HostCapacity, PendingJob, Placement, reserve, schedule
from shared.spec import GpuRequest, Range, Resources, TaskSpec, parse_spec, validate_spec
from shared.wire import GpuHealth, Inventory
from tests.fakes import fixture_inventory
from tests.test_scheduler import CPU_MIN, GPU_REQUEST, IMAGE, PRIORITY, hosts_strategy, inventory

PROJECTS = ("default", "ml")
SHARES = st.tuples(*(st.sampled_from((0.25, 0.5, 1.0)) for _ in PROJECTS))  # one factor per project
SIMPLE_GPU = st.sampled_from((None, GpuRequest(count=Range(1, 1)), GpuRequest(count=Range(2, 2))))
MAX_DURATION = st.sampled_from((None, None, 60, 600, 3600))
START = 1_000_000.0  # the simulated clock's start


@dataclass
class World:
    """The truth the changes apply to, from which `schedule()` starts from scratch each time."""

    hosts: dict[str, HostCapacity]  # by id, no block busy
    gone: set[str] = field(default_factory=set)  # hosts removed for now
    allocations: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # job -> host, blocks
    ends: dict[str, float] = field(default_factory=dict)  # allocation -> its estimated end, if known
    pending: dict[str, PendingJob] = field(default_factory=dict)
    seq: int = 0
    shares: dict[str, float] = field(default_factory=dict)  # project -> fair-share factor; absent: 1.0
    now: float = START
    reserved: Reserved = NO_RESERVATIONS
    held: dict[str, tuple[GpuHealth, ...]] = field(default_factory=dict)  # host -> its unhealthy GPUs

    def block_ends(self) -> dict[str, dict[int, float]]:
        ends: dict[str, dict[int, float]] = {}
        for alloc, end in self.ends.items():
            if alloc in self.allocations:
                host_id, blocks = self.allocations[alloc]
                ends.setdefault(host_id, {}).update(dict.fromkeys(blocks, end))
        return ends

    def capacity(self) -> list[HostCapacity]:
        busy: dict[str, set[int]] = {}
        for host_id, blocks in self.allocations.values():
            busy.setdefault(host_id, set()).update(blocks)
        return [
            with_held(
                replace(h, busy_blocks=h.busy_blocks | frozenset(busy.get(h.host_id, ()))),
                self.held.get(h.host_id, ()),
            )
            for h in self.hosts.values()
            if h.host_id not in self.gone
        ]

    def sicken(self, host_id: str, pick: int) -> None:
        """The host's agent reports one of its GPUs unhealthy; the coordinator holds it with the others."""
        gpus = self.hosts[host_id].inventory.gpus
        if gpus:
            mark = GpuHealth(index=gpus[pick % len(gpus)].index, reason="XID 79 (fallen off the bus)")
            self.held[host_id] = held_after_report(self.held.get(host_id, ()), (mark,))

    def host_now(self, host_id: str) -> HostCapacity:
        return next(h for h in self.capacity() if h.host_id == host_id)


def world_of(
    hosts: list[HostCapacity], shares: tuple[float, ...] = (), sick: tuple[tuple[int, int], ...] = ()
) -> World:
    """The hosts, their busy blocks held by allocations (one per block) that changes may end; the projects'
    fair-share factors; GPUs unhealthy from the start, each a (host, GPU) pick."""
    world = World(
        {h.host_id: replace(h, busy_blocks=frozenset()) for h in hosts},
        shares=dict(zip(PROJECTS, shares, strict=False)),
    )
    for host_pick, gpu_pick in sick:
        world.sicken(hosts[host_pick % len(hosts)].host_id, gpu_pick)
    for h in hosts:
        world.allocations.update((f"x-{h.host_id}-{b}", (h.host_id, (b,))) for b in h.busy_blocks)
        # some end on time, some are past their estimate, some have no max_duration
        world.ends.update((f"x-{h.host_id}-{b}", START + 600 * (b % 3) - 60) for b in h.busy_blocks if b % 4)
    return world


@st.composite
def fleets(draw: st.DrawFn) -> list[HostCapacity]:
    """The scheduler tests' random hosts, some in a fleet limited to one project; either fleet may have
    `placement: cluster` (multi-node jobs run only there)."""
    hosts = []
    cluster = {"default": draw(st.booleans()), "gpu-a": draw(st.booleans())}
    for h in draw(hosts_strategy()):
        h = replace(h, ready=draw(st.sampled_from((True, True, True, False))))
        h = replace(h, fleet="gpu-a", projects=frozenset({"ml"})) if draw(st.booleans()) else h
        hosts.append(replace(h, cluster=cluster[h.fleet]))
    return hosts


Ask = tuple[Resources, str | None, str, int, int | None]  # resources, image, project, nodes, max_duration


@st.composite
def requests(draw: st.DrawFn) -> Ask:
    """Mostly plain requests (no GPU, or 1 or 2 of any model), which random hosts often fit; else any. Some
    are multi-node jobs."""
    gpu = draw(st.one_of(SIMPLE_GPU, SIMPLE_GPU, GPU_REQUEST))
    resources = Resources(gpu=gpu, cpu=draw(st.one_of(st.none(), CPU_MIN)))
    nodes = draw(st.sampled_from((1, 1, 2, 3)))
    image, project = draw(st.one_of(st.none(), IMAGE)), draw(st.sampled_from(PROJECTS))
    return resources, image, project, nodes, draw(MAX_DURATION)


# A change: (kind, a number that picks what it applies to, a request index, a priority)
CHANGE = st.tuples(
    st.sampled_from(
        (
            "submit",
            "submit",
            "submit",
            "end",
            "end",
            "stop",
            "down",
            "up",
            "remove",
            "back",
            "limit",
            "placement",
            "plan",
            "sick",
            "undrain",
        )
    ),
    st.integers(0, 100),
    st.integers(0, 3),
    PRIORITY,
)


def _apply(world: World, live: LiveSchedule, change: tuple[str, int, int, int], asks: list[Ask]) -> None:
    kind, pick, ask, priority = change
    host_ids = sorted(world.hosts)
    host_id = host_ids[pick % len(host_ids)]
    if kind == "submit":
        resources, image, project, nodes, duration = asks[ask % len(asks)]
        spec = validate_spec(
            TaskSpec(
                commands=("true",),
                image=image,
                resources=resources,
                priority=priority,
                max_duration_s=duration,
            )
        )
        spec = msgspec.structs.replace(spec, nodes=nodes)  # the scheduler places what the spec may refuse
        world.seq += 1
        share = world.shares.get(project, 1.0)
        job = PendingJob(f"j{world.seq}", spec, world.seq, priority, project, share)
        world.pending[job.job_id] = job
        live.add_job(job, "waiting for the scheduler")
    elif kind == "end" and world.allocations:
        job_id = sorted(world.allocations)[pick % len(world.allocations)]
        ended_on, _ = world.allocations.pop(job_id)
        if ended_on not in world.gone:
            live.set_host(world.host_now(ended_on))
    elif kind == "stop" and world.pending:
        job_id = sorted(world.pending)[pick % len(world.pending)]
        del world.pending[job_id]
        live.remove_job(job_id)
    elif kind in ("down", "up") and host_id not in world.gone:
        ready = kind == "up"
        world.hosts[host_id] = replace(
            world.hosts[host_id], ready=ready, not_ready="" if ready else "unreachable"
        )
        live.set_host(world.host_now(host_id))
    elif kind == "remove" and host_id not in world.gone:
        world.gone.add(host_id)
        world.allocations = {j: a for j, a in world.allocations.items() if a[0] != host_id}  # lost with it
        live.remove_host(host_id)
    elif kind == "back" and host_id in world.gone:
        world.gone.discard(host_id)
        live.set_host(world.host_now(host_id))
    elif kind == "limit":  # the fleet's project limit changes, for each of its hosts
        projects = None if pick % 3 == 0 else frozenset(PROJECTS[: 1 + pick % 2])
        for other in host_ids:
            if world.hosts[other].fleet == "gpu-a":
                world.hosts[other] = replace(world.hosts[other], projects=projects)
                if other not in world.gone:
                    live.set_host(world.host_now(other))
    elif kind == "placement":  # a fleet's `placement` changes between cluster and any, for each of its hosts
        fleet = ("default", "gpu-a")[pick % 2]
        for other in host_ids:
            if world.hosts[other].fleet == fleet:
                world.hosts[other] = replace(world.hosts[other], cluster=not world.hosts[other].cluster)
                if other not in world.gone:
                    live.set_host(world.host_now(other))
    elif kind == "share":  # one project's usage moved its factor: the beat re-syncs every job with it
        project = PROJECTS[pick % len(PROJECTS)]
        world.shares[project] = (0.25, 0.5, 1.0)[ask % 3]
        world.pending = {
            j: replace(job, share=world.shares.get(job.project, 1.0)) for j, job in world.pending.items()
        }
        # a reserved job that moved in the queue has its reservation ended until the next plan, even if a
        # later change moves it back
        moved = [
            j
            for j, r in world.reserved.by_job.items()
            if j in world.pending and world.pending[j].order() != r.order
        ]
        world.reserved = world.reserved.without(moved)
        live.sync(world.pending.values(), world.capacity(), live.pending())
    elif (
        kind == "sick" and host_id not in world.gone
    ):  # its agent reports a GPU unhealthy (running work goes on)
        world.sicken(host_id, priority)
        live.set_host(world.host_now(host_id))
    elif kind == "undrain" and host_id not in world.gone:  # the operator undrains; the devices recovered
        world.held.pop(host_id, None)
        live.set_host(world.host_now(host_id))
    elif kind == "plan":  # time passes; the beat plans the reservations again, as deep as it is set
        world.now += (0, 30, 300, 1200)[ask]
        depth = (0, 1, 2, 16)[pick % 4]
        ends = world.block_ends()
        reservations = live.plan(ends, world.now, depth)
        assert reservations == reserve(world.pending.values(), world.capacity(), ends, world.now, depth)
        live.set_reservations(reservations, world.now)
        world.reserved = Reserved(reservations, world.now)


# GPUs unhealthy from the start: (host, GPU) picks
SICK = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=3).map(tuple)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fleets(),
    st.lists(requests(), min_size=1, max_size=4),
    st.lists(CHANGE, min_size=1, max_size=30),
    SHARES,
    SICK,
)
@example(  # a GPU of a free block turns unhealthy while a job waits for it: the job's reason says so
    [HostCapacity("id-h0", "h0", inventory("h0", 2, blocks=2), frozenset({0}))],
    [(Resources(gpu=GpuRequest(count=Range(2, 2))), None, "default", 1, None)],
    [("submit", 0, 0, 0), ("sick", 0, 0, 1)],
    (1.0, 1.0),
    (),
)
def test_after_each_change_the_live_state_places_what_a_full_pass_would(
    hosts: list[HostCapacity],
    asks: list[Ask],
    changes: list[tuple[str, int, int, int]],
    shares: tuple[float, ...],
    sick: tuple[tuple[int, int], ...],
) -> None:
    _check_each_change(world_of(hosts, shares, sick), asks, changes)


# Busy fleets, where the queue waits: most changes submit, end or plan the reservations again; a share
# change re-adds the jobs in a new order, which ends their reservations.
BACKFILL_CHANGE = st.tuples(
    st.sampled_from(("submit",) * 6 + ("end", "end", "stop", "plan", "plan", "plan", "down", "up", "share")),
    st.integers(0, 100),
    st.integers(0, 3),
    PRIORITY,
)


@st.composite
def small_fleets(draw: st.DrawFn) -> list[HostCapacity]:
    """1 or 2 hosts of 4 or 8 GPUs, some blocks busy: a few jobs fill them."""
    hosts = []
    for n in range(draw(st.integers(1, 2))):
        inv = inventory(f"h{n}", draw(st.sampled_from((4, 8))))
        busy = draw(st.sets(st.integers(0, len(inv.blocks) - 1)))
        hosts.append(HostCapacity(f"id-h{n}", f"h{n}", inv, frozenset(busy)))
    return hosts


@st.composite
def contended(draw: st.DrawFn) -> Ask:
    """Requests that the hosts fit, but not all at once: 1, 2 or 4 GPUs, some on two nodes."""
    count = draw(st.sampled_from((1, 1, 2, 4)))
    resources = Resources(gpu=GpuRequest(count=Range(count, count)))
    return resources, None, "default", draw(st.sampled_from((1, 1, 1, 2))), draw(MAX_DURATION)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    small_fleets(),
    st.lists(contended(), min_size=1, max_size=4),
    st.lists(BACKFILL_CHANGE, min_size=10, max_size=40),
)
def test_with_reservations_the_live_state_places_what_a_full_pass_would(
    hosts: list[HostCapacity], asks: list[Ask], changes: list[tuple[str, int, int, int]]
) -> None:
    """Jobs held off reserved blocks, backfilled onto them, the reserved job's reason, as time passes."""
    _check_each_change(world_of(hosts), asks, changes)


def _check_each_change(world: World, asks: list[Ask], changes: list[tuple[str, int, int, int]]) -> None:
    live = LiveSchedule()
    live.sync([], world.capacity(), {})
    told: dict[str, str] = {}
    for change in changes:
        _apply(world, live, change, asks)
        expected = schedule(list(world.pending.values()), world.capacity(), world.reserved)
        settled = live.settle()
        assert settled.placements == expected.placements, change
        told.update(settled.reasons)
        _took(world, settled.placements)
        for p in settled.placements:
            told.pop(p.job_id, None)
        assert {j: told[j] for j in world.pending} == expected.pending, change
        assert live.pending() == expected.pending


@settings(max_examples=50, deadline=None)
@given(
    fleets(),
    st.lists(requests(), min_size=1, max_size=4),
    st.lists(CHANGE, min_size=1, max_size=20),
    SHARES,
    SICK,
)
def test_a_resync_from_scratch_changes_nothing_after_the_changes(
    hosts: list[HostCapacity],
    asks: list[Ask],
    changes: list[tuple[str, int, int, int]],
    shares: tuple[float, ...],
    sick: tuple[tuple[int, int], ...],
) -> None:
    """The housekeeping beat's re-sync finds no drift in a state kept up to date by its changes."""
    world = world_of(hosts, shares, sick)
    live = LiveSchedule()
    live.sync([], world.capacity(), {})
    for change in changes:
        _apply(world, live, change, asks)
        _took(world, live.settle().placements)
    before = live.pending()
    live.sync(world.pending.values(), world.capacity(), before)
    assert live.settle().placements == []
    assert live.pending() == before


def _took(world: World, placements: list[Placement]) -> None:
    """The placements become allocations, one per node of a multi-node job (a change may end one alone),
    ending by their max_duration if they have one. None takes a block with an unhealthy GPU."""
    for p in placements:
        sick = unhealthy_blocks(world.hosts[p.host_id].inventory, world.held.get(p.host_id, ()))
        assert not sick.intersection(p.blocks), f"{p.job_id} placed on unhealthy blocks of {p.host_id}"
        world.allocations[f"{p.job_id}/{p.node}"] = (p.host_id, p.blocks)
        job = world.pending.pop(p.job_id, None)
        if job is not None and job.spec.max_duration_s is not None:
            world.ends[f"{p.job_id}/{p.node}"] = world.now + job.spec.max_duration_s


def test_a_resync_corrects_an_end_it_was_not_told() -> None:
    h = HostCapacity("id-h", "h", inventory("h", 2, blocks=2), frozenset({0, 1}))
    job = PendingJob("j1", validate_spec(TaskSpec(commands=("true",), resources=Resources())), 1)
    live = LiveSchedule()
    live.sync([job], [h], {})
    assert live.settle().placements == []
    live.sync([job], [replace(h, busy_blocks=frozenset({0}))], {})  # block 1's allocation ended unseen
    assert [(p.job_id, p.blocks) for p in live.settle().placements] == [("j1", (1,))]


def test_a_host_with_an_unsound_inventory_is_left_out_and_the_rest_is_placed() -> None:
    good = HostCapacity("id-good", "good", inventory("good", 2))
    broken = HostCapacity("id-bad", "bad", _misnumbered(inventory("bad", 2)))
    job = PendingJob("j1", validate_spec(TaskSpec(commands=("true",), resources=Resources())), 1)
    live = LiveSchedule()
    live.sync([job], [broken, good], {})
    assert [p.host_id for p in live.settle().placements] == ["id-good"]
    _, skipped = schedule_skipping([job], [broken, good])
    assert live.skipped == skipped


def _misnumbered(inv: Inventory) -> Inventory:
    """The inventory with its second block numbered 5, as an older version might have stored it."""
    blocks = list(inv.blocks)
    blocks[1] = msgspec.structs.replace(blocks[1], index=5)
    return msgspec.structs.replace(inv, blocks=tuple(blocks))


def test_a_job_goes_to_a_looser_host_rather_than_be_split_across_islands(tmp_path: Path) -> None:
    """The pass's second choice, which random fleets seldom reach: the best-ranked host would split the job
    across NVLink islands, a looser one keeps it together (tests/test_placement_topology.py's cases)."""
    islands = fixture_inventory(tmp_path, "nvml", "a100_sxm4_2x4")
    split = HostCapacity("split", "a-split", islands, frozenset({0, 4, 5}))  # free: 3 + 2, spare 1
    whole = HostCapacity("whole", "b-whole", islands, frozenset())  # free: 4 + 4, spare 4
    broken = HostCapacity("split", "a-split", islands, frozenset({0, 1}))  # free: 2 + 4, spare 3
    four = PendingJob("four", parse_spec("commands: [train]\nresources: {gpu: 4}\n"), 1)
    three = PendingJob("three", parse_spec("commands: [train]\nresources: {gpu: 3}\n"), 1)
    for job, hosts in (([four], [split, whole]), ([three], [broken, whole]), ([four], [split])):
        live = LiveSchedule()
        live.sync(job, hosts, {})
        assert live.settle().placements == schedule(job, hosts).placements


def test_a_freed_block_goes_to_the_project_with_the_higher_fair_share_factor() -> None:
    """Random changes seldom meet this: two projects' equal-priority jobs wait for one block; the younger
    job of the project that used less goes first, in the live state as in a full pass."""
    h = HostCapacity("id-h", "h", inventory("h", 2, blocks=2), frozenset({0, 1}))
    spec = validate_spec(TaskSpec(commands=("true",), resources=Resources()))
    older = PendingJob("older", spec, 1, project="default", share=0.25)
    younger = PendingJob("younger", spec, 2, project="ml", share=1.0)
    live = LiveSchedule()
    live.sync([older, younger], [h], {})
    assert live.settle().placements == []
    freed = replace(h, busy_blocks=frozenset({0}))
    live.set_host(freed)
    placements = live.settle().placements
    assert [p.job_id for p in placements] == ["younger"]
    assert placements == schedule([older, younger], [freed]).placements


def test_a_job_that_comes_ahead_of_a_reservation_may_take_its_blocks_at_once() -> None:
    """Random changes seldom meet this: a 1-GPU job waits behind a reservation that holds the free block,
    and says so; one alike but of a higher priority comes ahead of the reserved job, and takes the block at
    once, in the live state as in a full pass."""
    h = HostCapacity("id-h", "h", inventory("h", 2, blocks=2), frozenset({0}))
    two, one = (
        validate_spec(TaskSpec(commands=("true",), resources=Resources(gpu=GpuRequest(count=Range(n, n)))))
        for n in (2, 1)
    )
    big, behind = PendingJob("big", two, 1, priority=50), PendingJob("behind", one, 2, priority=0)
    live = LiveSchedule()
    live.sync([big], [h], {})
    assert live.settle().placements == []
    reservations = live.plan({"id-h": {0: START + 600}}, START, 16)
    live.set_reservations(reservations, START)
    live.add_job(behind)
    assert live.settle().placements == []
    held = schedule([big, behind], [h], Reserved(reservations, START)).pending
    assert live.pending() == held
    assert held["behind"].endswith(
        "free blocks are reserved for a job ahead (a max_duration would let it run before it)"
    )
    urgent = PendingJob("urgent", one, 3, priority=100)
    live.add_job(urgent)
    placements = live.settle().placements
    assert [(p.job_id, p.blocks) for p in placements] == [("urgent", (1,))]
    assert placements == schedule([big, behind, urgent], [h], Reserved(reservations, START)).placements
