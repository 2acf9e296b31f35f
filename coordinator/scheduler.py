"""Placement as a pure function: pending jobs and host capacity in, placements and reasons out.

Order is priority (higher first), then the project's fair-share factor (higher first: the project that
used fewer GPU-hours lately, coordinator/queue_policy.py), then FIFO. A job takes the smallest number of
whole blocks whose resources satisfy its request (for CPU, memory and disk the minimum decides; the GPU count's maximum binds too, since a
job must never see more GPUs than it asked for). Among hosts that fit, a job that asks for no GPU prefers
hosts without GPUs; then the tightest fit wins, which keeps large free sets intact for large jobs. A job that
asks for no GPU takes its blocks' CPU, memory and disk but none of their GPUs. On that host the job gets the closest free blocks: one NVLink/XGMI
island, else one PCIe root, else one NUMA node, best fit first (coordinator/locality.py). A multi-node job
(`nodes: N`) takes such blocks on N hosts of one fleet with `placement: cluster` at once, or nothing
(`gang_hosts`). Every job left pending gets one human reason. Backfill: the blocks reserved for jobs that
wait (coordinator/backfill.py) are kept from the jobs behind them that would not end before their reserved
start.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.backfill import Candidate, Ends, Reservation, Reserved, held_off, plan
from coordinator.locality import Levels, block_levels, choose_blocks, closeness
from shared.describe import describe_gpus, describe_request, rounded_memory_mib
from shared.spec import GpuRequest, Range, Resources, TaskSpec
from shared.units import format_mib
from shared.volumes import first_volume_refusal
from shared.wire import Block, GpuDevice, Inventory


@dataclass(frozen=True)
class HostCapacity:
    host_id: str
    name: str
    inventory: Inventory
    busy_blocks: frozenset[int] = frozenset()
    ready: bool = True  # False: registered but unreachable or draining; counts for "could ever fit" only
    fleet: str = "default"
    projects: frozenset[str] | None = None  # the fleet is limited to these projects; None: open to all
    not_ready: str = ""  # why it is not ready ("draining", "unreachable"), for a pending job's reason
    cluster: bool = False  # its fleet has `placement: cluster` (one fast network): multi-node jobs run here
    unhealthy: str = (
        ""  # which held unhealthy devices idle blocks here (in busy_blocks), for a pending reason
    )


@dataclass(frozen=True)
class PendingJob:
    job_id: str
    spec: TaskSpec
    seq: int  # submission order
    priority: int = 0
    project: str = "default"
    share: float = 1.0  # its project's fair-share factor: equal priorities, the higher goes first

    def order(self) -> tuple[int, float, int]:
        """Its place in the queue: priority, then fair share, then age."""
        return (-self.priority, -self.share, self.seq)


@dataclass(frozen=True)
class Placement:
    job_id: str
    host_id: str
    blocks: tuple[int, ...]
    gpus: tuple[int, ...]
    cpus: tuple[int, ...]
    memory_mib: int
    node: int = 0  # its rank among the job's nodes (a multi-node job has one placement per node)


@dataclass
class ScheduleResult:
    placements: list[Placement] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # job id -> reason


NO_RESERVATIONS = Reserved((), 0.0)
NAMED_IN_REASON = 3  # unhealthy hosts, and GPUs of a host, a pending job's reason names; the rest are counted


def schedule(
    jobs: Iterable[PendingJob], hosts: Sequence[HostCapacity], reserved: Reserved = NO_RESERVATIONS
) -> ScheduleResult:
    """Place what fits now, in queue order (priority, fair share, age), keeping each job off the blocks
    `reserved` for jobs ahead of it that it would not end before; give every other job its reason. Pure."""
    jobs = sorted(jobs, key=PendingJob.order)
    queued = {j.job_id: j.order() for j in jobs}
    stale = [r.job_id for r in reserved.by_job.values() if queued.get(r.job_id) != r.order]  # left, or moved
    state = _Pass(hosts, reserved.without(stale))
    result = ScheduleResult()
    stuck: dict[FitKey, list[PendingJob]] = {}
    for job in jobs:
        key = fit_key(job)
        if key in stuck:  # free blocks only shrink during a pass: an identical request cannot fit either
            stuck[key].append(job)
            continue
        placements = state.place(job)
        if not placements:
            stuck[key] = [job]
        else:
            result.placements.extend(placements)
            state.reserved = state.reserved.without([job.job_id])  # placed: nothing to hold for it
    for same in stuck.values():
        reason = state.reason(same[0])  # after every placement of this pass: what the user will see
        result.pending.update((job.job_id, reason + state.reserved.note(job.job_id)) for job in same)
    return result


def reserve(
    jobs: Iterable[PendingJob], hosts: Sequence[HostCapacity], ends: Ends, now: float, depth: int
) -> list[Reservation]:
    """The reservations of the first `depth` of the pending `jobs` that a ready host fits (backfill.py's
    `plan`), on the hosts as they are. Pure."""
    state = _Pass(hosts, NO_RESERVATIONS)
    by_key: dict[Hashable, PendingJob] = {}
    queue = []
    for job in sorted(jobs, key=PendingJob.order):
        key = fit_key(job)
        by_key.setdefault(key, job)
        queue.append((job.job_id, job.order(), job.spec.nodes, key))
    free = {host_id: set(blocks) for host_id, blocks in state.free.items()}
    return plan(queue, lambda key: state.candidates(by_key[key]), free, ends, now, depth)


class _Pass:
    """The free blocks during one pass, with caches keyed by request: many queued jobs ask the same."""

    def __init__(self, hosts: Sequence[HostCapacity], reserved: Reserved) -> None:
        self.hosts = hosts
        self.reserved = reserved
        self.by_id = {h.host_id: h for h in hosts}
        self.free = {h.host_id: _free_blocks(h) for h in hosts if h.ready}
        self._fits: dict[FitKey, dict[str, int | str]] = {}
        self._matching: dict[tuple[GpuRequest | None, str], frozenset[int]] = {}
        self._levels: dict[str, Levels] = {}

    def levels(self, host_id: str) -> Levels:
        if host_id not in self._levels:
            self._levels[host_id] = block_levels(self.by_id[host_id].inventory)
        return self._levels[host_id]

    def fits(self, job: PendingJob) -> dict[str, int | str]:
        spec = job.spec
        key = fit_key(job)
        if key not in self._fits:
            self._fits[key] = {h.host_id: host_fit(h, spec, job.project) for h in self.hosts}
        return self._fits[key]

    def matching(self, spec: TaskSpec, host_id: str) -> frozenset[int]:
        """The host's blocks whose GPUs the job's request accepts, busy or free."""
        key = (spec.resources.gpu, host_id)
        if key not in self._matching:
            self._matching[key] = matching_blocks(spec.resources.gpu, self.by_id[host_id].inventory)
        return self._matching[key]

    def free_matching(self, spec: TaskSpec, host_id: str) -> list[int]:
        matching = self.matching(spec, host_id)
        return [b for b in self.free[host_id] if b in matching]

    def usable(self, job: PendingJob, host_id: str) -> list[int]:
        """The free matching blocks the job may take: not those reserved for a job ahead that it would not
        end before."""
        eligible = self.free_matching(job.spec, host_id)
        if host_id not in self.reserved.on:
            return eligible
        ahead = self.reserved.ahead(job.order())
        hidden = self.reserved.hidden(host_id, ahead, job.spec.max_duration_s)
        return [b for b in eligible if b not in hidden]

    def candidates(self, job: PendingJob) -> list[Candidate]:
        """The ready hosts that fit the job, as the backfill planner sees them."""
        return [
            Candidate(
                h, self.by_id[h].name, self.by_id[h].fleet, need, self.matching(job.spec, h), self.levels(h)
            )
            for h, need in self.fits(job).items()
            if isinstance(need, int) and h in self.free
        ]

    def place(self, job: PendingJob) -> list[Placement]:
        """The tightest-fitting ready host's closest free matching blocks, taken out of the free set (for a
        job that asks for no GPU, hosts without GPUs first). A host
        whose free blocks would split the job wider than the host's topology allows (two NVLink islands
        where one could hold it) is passed over for the next tightest one that keeps it together.
        A multi-node job takes such blocks on each of its hosts (`gang_hosts`), all of them or none."""
        candidates: list[_Candidate] = []
        for host_id, need in self.fits(job).items():
            if not isinstance(need, int) or host_id not in self.free:
                continue
            eligible = self.usable(job, host_id)
            if len(eligible) >= need:
                spare = len(eligible) - need
                rank = (self._gpus_wasted(job.spec, host_id), spare, self.by_id[host_id].name, host_id)
                candidates.append((rank, host_id, eligible, need))
        if not candidates:
            return []
        if job.spec.nodes > 1:
            return self._place_gang(job, sorted(candidates, key=lambda c: c[0]))
        best = min(candidates, key=lambda c: c[0])
        if best[3] > 1 and self._split(job.spec, best):
            ranked = sorted(candidates, key=lambda c: c[0])
            best = next((c for c in ranked if c is not best and not self._split(job.spec, c)), best)
        _, host_id, eligible, need = best
        chosen = choose_blocks(eligible, need, self.levels(host_id))
        taken = set(chosen)
        self.free[host_id] = [b for b in self.free[host_id] if b not in taken]
        return [placement_of(job, self.by_id[host_id], chosen)]

    def _place_gang(self, job: PendingJob, ranked: list[_Candidate]) -> list[Placement]:
        by_id = {c[1]: c for c in ranked}
        hosts = gang_hosts(((c[1], self.by_id[c[1]].fleet) for c in ranked), job.spec.nodes)
        placements = []
        for node, host_id in enumerate(hosts or ()):
            _, _, eligible, need = by_id[host_id]
            chosen = choose_blocks(eligible, need, self.levels(host_id))
            taken = set(chosen)
            self.free[host_id] = [b for b in self.free[host_id] if b not in taken]
            placements.append(placement_of(job, self.by_id[host_id], chosen, node))
        return placements

    def _gpus_wasted(self, spec: TaskSpec, host_id: str) -> int:
        """1 when a job that asks for no GPU would take blocks of a GPU host (their GPUs then sit idle)."""
        return int(spec.resources.gpu is None and bool(self.by_id[host_id].inventory.gpus))

    def _split(self, spec: TaskSpec, candidate: _Candidate) -> bool:
        """Whether the host's free blocks hold the job less closely than its blocks could, all free."""
        _, host_id, eligible, need = candidate
        return splits(eligible, need, self.matching(spec, host_id), self.levels(host_id))

    def reason(self, job: PendingJob) -> str:
        if not self.hosts:
            return NO_HOSTS
        fits = self.fits(job)
        possible = {h: n for h, n in fits.items() if isinstance(n, int)}
        if not possible:
            return never_fits(self.hosts, fits)
        nodes = job.spec.nodes
        if nodes > 1 and (few := too_few_hosts(nodes, (self.by_id[h].fleet for h in possible))):
            return few
        ready = [h for h in possible if h in self.free]
        if not ready:
            return none_ready(self.by_id[h] for h in possible)
        held = self._held_off(job, possible)
        if nodes > 1:
            room = (self.by_id[h].fleet for h in ready if len(self.usable(job, h)) >= possible[h])
            return gang_busy(nodes, room) + held + unhealthy_notes(self.by_id[h] for h in ready)
        need = min(possible[h] for h in ready)
        largest = max(len(self.usable(job, h)) for h in ready)
        return too_busy(job.spec, need, largest) + held + unhealthy_notes(self.by_id[h] for h in ready)

    def _held_off(self, job: PendingJob, possible: Mapping[str, int]) -> str:
        """`held_off`'s words if a ready host would take the job now but for blocks reserved ahead of it."""
        for h in self.reserved.on:
            need = possible.get(h)
            if need is None or h not in self.free:
                continue
            if len(self.usable(job, h)) < need <= len(self.free_matching(job.spec, h)):
                return held_off(job.spec.max_duration_s)
        return ""


NO_HOSTS = "no hosts registered"


def gang_hosts(ranked: Iterable[tuple[str, str]], nodes: int) -> list[str] | None:
    """The hosts of a multi-node job: of the (host id, fleet) pairs that can take one node now, best first,
    the first `nodes` of the first fleet to gather that many; None if no fleet has that many now. One fleet:
    its hosts are the ones that share a network."""
    by_fleet: dict[str, list[str]] = {}
    for host_id, fleet in ranked:
        hosts = by_fleet.setdefault(fleet, [])
        hosts.append(host_id)
        if len(hosts) == nodes:
            return hosts
    return None


def too_few_hosts(nodes: int, fleets: Iterable[str]) -> str:
    """The reason of a multi-node job whose fleets (one per host that fits it, busy or free) never hold
    `nodes` such hosts; "" when one does."""
    counts = Counter(fleets)
    if max(counts.values(), default=0) >= nodes:
        return ""
    fleet, most = max(sorted(counts.items()), key=lambda c: c[1])
    return f"no fleet has {nodes} hosts that can fit this job; most: {most} in fleet {fleet}"


def gang_busy(nodes: int, fleets: Iterable[str]) -> str:
    """The reason of a multi-node job that waits for room (`fleets`: one per ready host with room now)."""
    most = max(Counter(fleets).values(), default=0)
    return f"waiting for {nodes} hosts of one fleet with room at once; now {most}"


def never_fits(hosts: Iterable[HostCapacity], fits: Mapping[str, int | str]) -> str:
    """The reason of a job no host fits, busy or free: the first three hosts' refusals; for a multi-node
    job that hosts outside cluster fleets would fit, what makes their fleet one."""
    hosts = list(hosts)
    clusterable = sorted({h.fleet for h in hosts if fits[h.host_id] == not_cluster(h.fleet)})
    if clusterable:
        return (
            f"no fleet with placement: cluster fits this multi-node job; hosts of fleet "
            f"{', '.join(clusterable)} do: gpuctl fleet set {clusterable[0]} --placement cluster"
        )
    parts = sorted({f"{h.name} {fits[h.host_id]}" for h in hosts})
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return "no host can ever fit this job: " + "; ".join(parts[:3]) + more


def none_ready(possible: Iterable[HostCapacity]) -> str:
    names = ", ".join(sorted(_named(h) for h in possible))
    return f"the hosts that fit this job are not ready: {names}"


def too_busy(spec: TaskSpec, need: int, largest: int) -> str:
    """The reason of a job that ready hosts fit, none with enough free blocks now."""
    gpu = spec.resources.gpu
    what = " ".join(gpu.names) + " " if gpu and gpu.names else ""
    return f"no host with {need} free {what}blocks; largest free: {largest}"


def unhealthy_notes(ready: Iterable[HostCapacity]) -> str:
    """What a busy reason adds for ready hosts whose unhealthy devices idle blocks: which GPU, and why; the
    first NAMED_IN_REASON hosts, the rest counted (every pending job's reason carries it)."""
    notes = sorted(h.unhealthy for h in ready if h.unhealthy)
    more = f" (and {len(notes) - NAMED_IN_REASON} more hosts)" if len(notes) > NAMED_IN_REASON else ""
    return "".join(f"; {note}" for note in notes[:NAMED_IN_REASON]) + more


def splits(eligible: Sequence[int], need: int, matching: Iterable[int], levels: Levels) -> bool:
    """Whether `need` of the `eligible` free blocks sit less closely than `need` of all `matching` blocks
    could (two NVLink islands where one would hold the job)."""
    return closeness(eligible, need, levels) > closeness(sorted(matching), need, levels)


def matching_blocks(gpu: GpuRequest | None, inventory: Inventory) -> frozenset[int]:
    """The host's blocks whose GPUs the request accepts, busy or free."""
    if gpu is None:
        return frozenset(b.index for b in inventory.blocks)
    devices = _devices(inventory)
    return frozenset(b.index for b in inventory.blocks if _gpus_match(gpu, devices[b.index]))


def _named(host: HostCapacity) -> str:
    return f"{host.name} ({host.not_ready})" if host.not_ready else host.name


def host_fit(host: HostCapacity, spec: TaskSpec, project: str) -> int | str:
    """How many blocks of the host the job needs, or why it never runs there: its fleet is closed to the
    job, the host cannot hold it, or (for a multi-node job only, and said only when nothing else refuses)
    its fleet's placement is not cluster."""
    need = admits(host, spec, project) or fit(spec, host.inventory)
    if spec.nodes > 1 and not host.cluster and isinstance(need, int):
        return not_cluster(host.fleet)
    return need


def not_cluster(fleet: str) -> str:
    return f"is in fleet {fleet}, whose placement is not cluster"


def admits(host: HostCapacity, spec: TaskSpec, project: str) -> str:
    """Why the host's fleet is closed to this job, or "" if it is open to it."""
    if spec.fleets and host.fleet not in spec.fleets:
        return f"is in fleet {host.fleet}, not in {', '.join(spec.fleets)}"
    if host.projects is not None and project not in host.projects:
        return f"is in fleet {host.fleet}, which is limited to projects {', '.join(sorted(host.projects))}"
    return ""


def fit(spec: TaskSpec, inventory: Inventory) -> int | str:
    """How many blocks of this host the job needs, or why it can never run here (a reason string)."""
    if not inventory.blocks:
        return "has no blocks"
    runtime = "docker" if spec.image else "process"
    if runtime not in inventory.runtimes:
        return f"has no {runtime} runtime"
    refusal = _policy_refusal(spec, inventory)
    if refusal:
        return refusal
    shape = inventory.blocks[0]
    res = spec.resources
    devices = _devices(inventory)
    eligible = [b for b in inventory.blocks if _gpus_match(res.gpu, devices[b.index])]
    need = max(1, _gpu_blocks(res.gpu, len(shape.gpus)) if res.gpu else 0, *_share_blocks(res, shape))
    if res.gpu and not eligible:
        return _no_matching_gpu(res.gpu, inventory)
    if res.gpu and res.gpu.count.max is not None and need * len(shape.gpus) > res.gpu.count.max:
        if max(1, _gpu_blocks(res.gpu, len(shape.gpus))) < need:  # CPU, memory or disk drive the block count
            return _shares_bring_gpus(res.gpu, need, shape)
        return _block_granularity(res.gpu, len(shape.gpus), len(inventory.gpus))
    if need > len(eligible):
        return _too_small(res, need, eligible, shape, inventory)
    return need


# ((GPUs wasted, free blocks to spare, name, host id), host id, free blocks, need); the first part ranks hosts
Rank = tuple[int, int, str, str]
_Candidate = tuple[Rank, str, list[int], int]
FitKey = tuple[Resources, bool, tuple[str, ...], bool, tuple[str, ...], str, int, int | None]


def fit_key(job: PendingJob) -> FitKey:
    """Everything of a job that `fit` and `admits` read, its number of nodes and its max_duration (which
    reserved blocks it may backfill onto): jobs with equal keys fit (or not) on the same hosts."""
    spec = job.spec
    key = (spec.resources, spec.image is None, spec.volumes, spec.privileged, spec.fleets, job.project)
    return (*key, spec.nodes, spec.max_duration_s)


def _policy_refusal(spec: TaskSpec, inventory: Inventory) -> str | None:
    """What the host's agent config forbids a container job (host paths outside its allowed prefixes,
    privileged). A plain-process job mounts nothing, so its volumes are not checked."""
    if not spec.image:
        return None
    if spec.privileged and not inventory.privileged_allowed:
        return "does not allow privileged containers"
    return first_volume_refusal(spec.volumes, inventory.volume_prefixes)


def _gpu_blocks(gpu: GpuRequest, gpus_per_block: int) -> int:
    wanted = int(gpu.count.min or 0)
    if wanted == 0:
        return 0
    if gpus_per_block == 0:
        return 10**9  # a host without GPUs can never give one; _too_small explains
    return math.ceil(wanted / gpus_per_block)


def _share_blocks(res: Resources, shape: Block) -> list[int]:
    needs = []
    for wanted, per_block in (
        (res.cpu.min if res.cpu else None, len(shape.cpus)),
        (res.memory_mib.min if res.memory_mib else None, shape.memory_mib),
        (res.disk_mib.min if res.disk_mib else None, shape.disk_mib),
    ):
        if wanted:
            needs.append(math.ceil(wanted / per_block) if per_block else 10**9)
    return needs


def _devices(inventory: Inventory) -> dict[int, list[GpuDevice]]:
    """Each block's GPU devices, by block index."""
    by_index = {g.index: g for g in inventory.gpus}
    return {b.index: [by_index[i] for i in b.gpus if i in by_index] for b in inventory.blocks}


def memory_matches(wanted: Range, device: GpuDevice) -> bool:
    """Vendors market memory in GiB (an H100 80GB has 81559 MiB, 79.6 GiB) or in decimal GB (an A10G or L4
    24GB has about 23030 MiB, 24.1 GB, 22.5 GiB): a device matches when either whole reading is in range."""
    decimal_gb = round(device.memory_mib * 1024 * 1024 / 1e9)
    return wanted.contains(rounded_memory_mib(device)) or wanted.contains(decimal_gb * 1024)


def _gpus_match(gpu: GpuRequest | None, devices: list[GpuDevice]) -> bool:
    if gpu is None:
        return True
    if not devices:
        return not gpu.count.min
    # Even an optional GPU (`H100:0..1`) must be the one asked for: the job sees every GPU of its blocks.
    names = {n.lower() for n in gpu.names}
    return all(
        (gpu.vendor is None or d.vendor == gpu.vendor)
        and (not names or d.name.lower() in names)
        and (gpu.memory_mib is None or memory_matches(gpu.memory_mib, d))
        and (gpu.compute_capability is None or _capability_matches(gpu.compute_capability, d))
        for d in devices
    )


def _capability_matches(wanted: Range, device: GpuDevice) -> bool:
    """A device whose compute capability is unknown ("", an AMD or Gaudi device) never matches a range."""
    try:
        return wanted.contains(float(device.compute_capability))
    except ValueError:
        return False


def _free_blocks(host: HostCapacity) -> list[int]:
    return [b.index for b in host.inventory.blocks if b.index not in host.busy_blocks]


def placement_of(job: PendingJob, host: HostCapacity, blocks: list[int], node: int = 0) -> Placement:
    """The blocks' devices, CPU ids and memory; no GPU at all for a job that asks for none."""
    chosen = [host.inventory.blocks[b] for b in blocks]
    return Placement(
        job.job_id,
        host.host_id,
        tuple(blocks),
        tuple(g for b in chosen for g in b.gpus) if job.spec.resources.gpu is not None else (),
        tuple(c for b in chosen for c in b.cpus),
        sum(b.memory_mib for b in chosen),
        node,
    )


def _no_matching_gpu(gpu: GpuRequest, inventory: Inventory) -> str:
    if not inventory.gpus:
        return f"has no GPU, job asks {describe_request(gpu)}"
    return f"has {describe_gpus(inventory)}, none matching {describe_request(gpu)}"


def _block_granularity(gpu: GpuRequest, per_block: int, total: int) -> str:
    wanted = describe_request(gpu)
    if gpu.count.min and gpu.count.min > total:
        return f"has {total} GPUs, job asks {wanted}"
    return f"is cut in blocks of {per_block} GPUs; {wanted} is not a whole number of blocks"


def _shares_bring_gpus(gpu: GpuRequest, need: int, shape: Block) -> str:
    per_block = (
        f"{len(shape.gpus)} GPU, {len(shape.cpus)} CPU, {format_mib(shape.memory_mib)} memory, "
        f"{format_mib(shape.disk_mib)} disk"
    )
    return (
        f"has blocks of {per_block}; the job's CPU, memory or disk minimum takes {need} blocks, "
        f"which hold {need * len(shape.gpus)} GPUs, more than its {describe_request(gpu)}"
    )


def _too_small(res: Resources, need: int, eligible: list[Block], shape: Block, inventory: Inventory) -> str:
    if res.gpu and res.gpu.count.min and not shape.gpus:
        return "has no GPU"
    if res.gpu and res.gpu.count.min and need * len(shape.gpus) > len(eligible) * len(shape.gpus):
        return f"has {len(eligible) * len(shape.gpus)} matching GPUs, job asks {describe_request(res.gpu)}"
    return f"has {len(eligible)} blocks of {len(shape.cpus)} CPU, {shape.memory_mib} MiB; job needs {need}"
