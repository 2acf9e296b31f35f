"""The scheduler kept between changes: a change re-tries only the requests it can help, on an index of free
blocks, so its cost follows what it touches, not the length of the queue or the size of the fleet.

`schedule()` (scheduler.py) stays the policy and the reference: after every change, `settle()` places exactly
what `schedule()` would place from scratch on the same jobs and hosts, and gives the same reasons. Why that
holds: after `settle()` nothing more fits (a pass from scratch would place nothing). A pass tries jobs in
queue order (priority, fair share, age) and gives up on a request (a fit key) at its first job that does not fit; free
blocks only shrink during a pass. So after a change only a request the change may help can place anything:
one that gained a job while it had none, or one that fits a host that gained free blocks, became ready,
came or changed. `settle()` re-tries exactly those, their jobs merged in the pass's order, each request
until its first job that does not fit.

Pending jobs are grouped by request. A group knows, for each ready host it fits, the host's free matching
blocks, and ranks the hosts that can take its next job by (GPUs wasted, blocks to spare, name), the pass's
order: the best host is found without a scan of the fleet. A change of one host updates the groups that fit
it; a request never seen before computes its fit on every host once, as a pass does.

A job's fair-share factor comes with it (PendingJob.share) and orders it after its priority. The jobs of a
group share one project, so a factor only moves whole groups against each other. Factors change with usage,
that is with time: the coordinator recomputes them at the housekeeping beat, whose re-sync re-adds the jobs
whose factor changed, and keeps them fixed between beats. Re-ordering alone never lets a job fit (after
`settle()` no group's first job fits), so no re-try is owed for it.

Backfill: the blocks reserved for waiting jobs (backfill.py; the coordinator re-plans them now and then,
`set_reservations`) are kept from the jobs behind them that would not end before the reserved start. Which
reservations a group must keep off depends on where its first job stands among them (`_Group.ahead`), so
a group's counts on the few reserved hosts are recomputed when its first job passes one; a group whose first
job moved ahead of one is re-tried. A reservation whose job leaves the queue (or moves in it) ends at once,
as in a pass, and the groups on its hosts are re-tried within the same settle. The time a job's max_duration
is judged against is the one given with the reservations: time passing alone only shrinks what a job may
backfill onto, so no re-try is owed for it.

A group's reason is computed when its inputs change, and reported only for jobs whose reason changed.
Hosts whose inventory is unsound, or that the scheduler raises on, are left out one by one (safe_schedule.py).
Not thread-safe: the coordinator calls it from its event loop only.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from coordinator.backfill import Candidate, Ends, Queued, Reservation, Reserved, held_off, plan
from coordinator.host_rank import Ranking
from coordinator.locality import block_levels, choose_blocks
from coordinator.preemption import Room
from coordinator.safe_schedule import failed_on, unsound
from coordinator.scheduler import (
    NO_HOSTS,
    NO_RESERVATIONS,
    FitKey,
    HostCapacity,
    PendingJob,
    Placement,
    fit_key,
    gang_busy,
    gang_hosts,
    host_fit,
    matching_blocks,
    never_fits,
    none_ready,
    placement_of,
    splits,
    too_busy,
    too_few_hosts,
    unhealthy_notes,
)
from shared.spec import GpuRequest


@dataclass
class Settled:
    placements: list[Placement] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # job id -> its new reason; changed ones only


class LiveSchedule:
    """The queue and the fleet as the scheduler sees them. Changes are applied as they come; `settle()`
    then places and reports. Every change is idempotent."""

    def __init__(self) -> None:
        self.hosts: dict[str, _Host] = {}
        self.skipped: dict[str, str] = {}  # host id -> why it is left out of scheduling
        self._skipped_caps: dict[str, HostCapacity] = {}
        self._groups: dict[FitKey, _Group] = {}
        self._group_of: dict[str, FitKey] = {}  # job id -> its group
        self._retry: set[FitKey] = set()  # groups a change may have helped
        self._rereason: set[FitKey] = set()  # groups whose reason may have changed
        self.reserved = NO_RESERVATIONS
        self.replan_wanted = False  # a reserved job left the queue, or a job newly waits ahead of the plan
        self._planned: set[str] = set()  # the jobs the last plan read
        self._frontier: tuple[int, float, int] | None = None  # the last one's order, if it stopped at `depth`

    # --- changes -----------------------------------------------------------------------------------

    def add_job(self, job: PendingJob, told: str = "") -> None:
        """A job became eligible (submitted, due for a retry), or changed; `told`: the reason it shows now.
        Idempotent."""
        key = self._group_of.get(job.job_id)
        if key is not None:
            if self._groups[key].jobs[job.job_id] == job:
                return
            self._take_out(job.job_id)
            held = self.reserved.by_job.get(job.job_id)
            if held is not None and held.order != job.order():  # it moved in the queue: plan it again
                self._unreserve(job.job_id)
                self.replan_wanted = True
        key = fit_key(job)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = self._new_group(key, job)
        if not group.jobs:  # a group with jobs gave up on its first: this one, alike, cannot fit either
            self._retry.add(key)
        group.add(job, told, self.reserved.note(job.job_id))
        self._group_of[job.job_id] = key
        self._rereason.add(key)
        self._rebar(key)

    def remove_job(self, job_id: str) -> None:
        """A job is no longer eligible (placed, stopped, given up). Idempotent."""
        self._take_out(job_id)
        if job_id in self.reserved.by_job:  # its blocks are held no more; the plan is owed a new look
            self._unreserve(job_id)
            self.replan_wanted = True

    def _take_out(self, job_id: str) -> None:
        key = self._group_of.pop(job_id, None)
        if key is not None:
            self._groups[key].discard(job_id)
            self._rebar(key)

    def set_host(self, cap: HostCapacity) -> None:
        """A host as it is now: added, or its inventory, fleet, readiness or busy blocks changed. Idempotent."""
        host = self.hosts.get(cap.host_id)
        left_out = self._skipped_caps.get(cap.host_id)
        if host is None and left_out is not None and _same_shape(left_out, cap):
            return  # still left out: the same inventory fails the same way
        if host is None or not _same_shape(host.cap, cap):  # the one comparison of inventories
            self.remove_host(cap.host_id)
            self._add_host(replace(cap, busy_blocks=frozenset()), host_free(cap))
            return
        readiness_changed = (host.cap.ready, host.cap.not_ready, host.cap.unhealthy) != (
            cap.ready,
            cap.not_ready,
            cap.unhealthy,
        )
        free = host_free(cap)
        if readiness_changed or host.free != free:
            became_ready = cap.ready and not host.cap.ready
            grew = bool(free - host.free)
            if readiness_changed:
                host.cap = replace(cap, busy_blocks=frozenset())
            host.free = free
            self._host_changed(host, helps=grew or became_ready)

    def remove_host(self, host_id: str) -> None:
        """The host is gone (removed, or no inventory). Idempotent."""
        self.skipped.pop(host_id, None)
        self._skipped_caps.pop(host_id, None)
        host = self.hosts.pop(host_id, None)
        if host is None:
            return
        for group in self._groups.values():
            group.forget(host_id)
        self._rereason.update(self._groups)  # the hosts named in "no host can ever fit" changed

    def blocks_by_fleet(self) -> dict[str, tuple[int, int]]:
        """fleet -> (busy blocks, all blocks) of its hosts with an inventory, those left out included."""
        counts: dict[str, tuple[int, int]] = {}
        hosts = [(h.cap, len(h.cap.inventory.blocks) - len(h.free)) for h in self.hosts.values()]
        hosts += [(cap, len(cap.busy_blocks)) for cap in self._skipped_caps.values()]
        for cap, busy in hosts:
            held, total = counts.get(cap.fleet, (0, 0))
            counts[cap.fleet] = (held + busy, total + len(cap.inventory.blocks))
        return counts

    def sync(
        self, jobs: Iterable[PendingJob], hosts: Iterable[HostCapacity], told: Mapping[str, str]
    ) -> None:
        """Make the whole state what the store says (the housekeeping beat's re-sync): each difference is
        applied as the change it is, so drift is corrected and an unchanged state costs no placement work.
        Groups left without jobs are dropped."""
        hosts = list(hosts)
        for host_id in (self.hosts.keys() | self._skipped_caps.keys()) - {h.host_id for h in hosts}:
            self.remove_host(host_id)
        for cap in hosts:
            self.set_host(cap)
        wanted = {j.job_id: j for j in jobs}
        for job_id in self._group_of.keys() - wanted.keys():
            self.remove_job(job_id)
        for job in wanted.values():
            self.add_job(job, told.get(job.job_id, ""))
        for key in [k for k, g in self._groups.items() if not g.jobs]:
            self._drop_group(key)

    def set_reservations(self, reservations: Iterable[Reservation], now: float) -> None:
        """The blocks held for waiting jobs (backfill.py), replacing the last ones; `now`: the time a job's
        max_duration is judged from, until the next call. Idempotent."""
        old = self.reserved
        new = Reserved((r for r in reservations if r.job_id in self._group_of), now)
        self.reserved, self.replan_wanted = new, False
        for job_id in old.by_job.keys() | new.by_job.keys():
            key = self._group_of.get(job_id)
            if key is not None:
                self._groups[key].note(job_id, new.note(job_id))
                self._rereason.add(key)
        for group in self._groups.values():
            group.ahead = new.ahead(group.head()[:3]) if group.jobs else 0
        for host_id in old.on.keys() | new.on.keys():
            host = self.hosts.get(host_id)
            if host is not None:
                self._host_changed(host, helps=True)  # blocks it held may be free to all now

    def _unreserve(self, job_id: str) -> None:
        """Drop the reservation of a job that left the queue: its hosts' blocks are free to the others."""
        gone = self.reserved.by_job[job_id]
        self.reserved = self.reserved.without([job_id])
        for group in self._groups.values():  # the ranks behind it moved up one
            group.ahead = self.reserved.ahead(group.head()[:3]) if group.jobs else 0
        for host_id, _, _ in gone.nodes:
            host = self.hosts.get(host_id)
            if host is not None:
                self._host_changed(host, helps=True)

    def plan(self, ends: Ends, now: float, depth: int) -> list[Reservation]:
        """`reserve()` (scheduler.py) on the queue and hosts as they are: the reservations of the first
        `depth` waiting jobs that a ready host fits. Notes which jobs it read, so that a job that comes to
        wait ahead of them asks for a new plan (`replan_wanted`)."""
        self._planned, self._frontier = set(), None
        groups = {key: g for key, g in self._groups.items() if g.jobs and g.counts}  # a ready host fits it
        heads = (heapq.nsmallest(depth, g.jobs.values(), key=PendingJob.order) for g in groups.values())
        merged = heapq.merge(*heads, key=PendingJob.order)  # a group gives at most `depth`: each is read
        free = {host_id: host.free for host_id, host in self.hosts.items()}
        return plan(self._read(merged, depth), self._candidates, free, ends, now, depth)

    def _read(self, jobs: Iterable[PendingJob], depth: int) -> Iterator[Queued]:
        """The jobs as the planner reads them, noting each (every one it is given counts to `depth`)."""
        for job in jobs:
            self._planned.add(job.job_id)
            if len(self._planned) == depth:
                self._frontier = job.order()
            yield job.job_id, job.order(), job.spec.nodes, self._group_of[job.job_id]

    def _candidates(self, key: Hashable) -> list[Candidate]:
        """The ready hosts that fit the group's jobs, as the planner sees them."""
        group = self._groups[key]  # type: ignore[index]
        gpu = group.spec.resources.gpu
        candidates = []
        for host_id, (_, need) in group.counts.items():
            host = self.hosts[host_id]
            matching = host.matching_of(gpu)
            candidates.append(Candidate(host_id, host.cap.name, host.cap.fleet, need, matching, host.levels))
        return candidates

    # --- placing -----------------------------------------------------------------------------------

    def settle(self) -> Settled:
        """Place what the changes since the last call let fit, in queue order; answer the
        placements (already taken out of the free blocks, their jobs out of the queue) and the reasons
        that changed."""
        settled = Settled()
        retry, self._retry = self._retry, set()
        heads = [(g.head(), key) for key in retry if (g := self._groups.get(key)) is not None and g.jobs]
        heapq.heapify(heads)
        while heads or self._retry:
            if self._retry:  # a reserved job placed: the blocks it held may let jobs behind it fit
                more, self._retry = self._retry - {key for _, key in heads}, set()
                for key in more:
                    if (g := self._groups.get(key)) is not None and g.jobs:
                        heapq.heappush(heads, (g.head(), key))
                continue
            _, key = heapq.heappop(heads)
            group = self._groups[key]
            job = group.first()
            placements = self._place_gang(group, job) if job.spec.nodes > 1 else self._place(group, job)
            if not placements:
                self._waits(job)
                continue  # the pass gives up on this request here
            settled.placements.extend(placements)
            self.remove_job(job.job_id)
            if group.jobs:
                heapq.heappush(heads, (group.head(), key))
        self._tell(settled.reasons)
        return settled

    def pending(self) -> dict[str, str]:
        """Every queued job's current reason (for tests: it costs the whole queue)."""
        return {
            job_id: self._groups[key].told + self._groups[key].noted.get(job_id, "")
            for job_id, key in self._group_of.items()
        }

    def _waits(self, job: PendingJob) -> None:
        """A job found it cannot start now: if the last plan did not read it and it is ahead of the last
        one it read, the plan is owed a new look."""
        if job.job_id not in self._planned and (self._frontier is None or job.order() < self._frontier):
            self.replan_wanted = True

    def _place(self, group: _Group, job: PendingJob) -> list[Placement]:
        """`schedule()`'s choice for the job: the best ranked host, unless its free blocks would split the
        job wider than the host allows and a later one keeps it together; the closest blocks there."""
        while (best := group.ranking.best()) is not None:
            host = self.hosts[best]
            try:
                need = group.need(best)
                if need > 1 and self._splits(group, host, need):
                    others = (h for h in group.ranking.ordered() if h != best)
                    host = next(
                        (self.hosts[h] for h in others if not self._splits(group, self.hosts[h], need)), host
                    )
                    need = group.need(host.cap.host_id)
                chosen = choose_blocks(group.usable(host, self.reserved), need, host.levels)
            except Exception as exc:  # one bad host never stops placement on the others
                self._leave_out(host.cap, failed_on(exc))
                continue
            placement = placement_of(job, host.cap, chosen)
            host.free -= set(chosen)
            self._host_changed(host, helps=False)
            return [placement]
        return []

    def _place_gang(self, group: _Group, job: PendingJob) -> list[Placement]:
        """`schedule()`'s choice for a multi-node job: `gang_hosts` over the group's ranked hosts, the closest
        blocks on each; all of them or none."""
        chosen = self._gang_blocks(group, job.spec.nodes)
        placements = []
        for node, (host, blocks) in enumerate(chosen):
            placements.append(placement_of(job, host.cap, blocks, node))
            host.free -= set(blocks)
            self._host_changed(host, helps=False)
        return placements

    def _gang_blocks(self, group: _Group, nodes: int) -> list[tuple[_Host, list[int]]]:
        """Each node's host and blocks, or none; a host the choice raises on is left out, and the choice
        made again without it."""
        while True:
            ranked = ((h, self.hosts[h].cap.fleet) for h in group.ranking.ordered())
            chosen = []
            for host_id in gang_hosts(ranked, nodes) or ():
                host = self.hosts[host_id]
                try:
                    blocks = choose_blocks(
                        group.usable(host, self.reserved), group.need(host_id), host.levels
                    )
                except Exception as exc:  # one bad host never stops placement on the others
                    self._leave_out(host.cap, failed_on(exc))
                    break
                chosen.append((host, blocks))
            else:
                return chosen

    def _splits(self, group: _Group, host: _Host, need: int) -> bool:
        gpu = group.spec.resources.gpu
        return splits(group.usable(host, self.reserved), need, host.matching_of(gpu), host.levels)

    def _tell(self, reasons: dict[str, str]) -> None:
        for key in self._rereason:
            group = self._groups.get(key)
            if group is not None and group.jobs:
                group.tell(group.reason(self.hosts), reasons)
        self._rereason = set()

    # --- preemption (preempting.py) ------------------------------------------------------------------

    def first_waiting(self, limit: int) -> list[PendingJob]:
        """The first job of each of the first `limit` requests in queue order: after `settle()`, the first
        jobs that do not fit. Costs the number of requests, not of jobs."""
        heads = heapq.nsmallest(limit, (g.head() for g in self._groups.values() if g.jobs))
        return [self._groups[self._group_of[head[3]]].jobs[head[3]] for head in heads]

    def queued(self, job_id: str) -> PendingJob | None:
        key = self._group_of.get(job_id)
        return self._groups[key].jobs[job_id] if key is not None else None

    def rooms(self, job_id: str, fleets: frozenset[str], limit: int) -> list[Room]:
        """The ready hosts of `fleets` that a queued job's request fits but whose free blocks do not hold it
        now, the `limit` that miss the fewest blocks first. Costs the hosts the request fits."""
        group = self._groups[self._group_of[job_id]]
        gpu = group.spec.resources.gpu
        short = []
        for host_id, (free, need) in group.counts.items():
            cap = self.hosts[host_id].cap
            if free < need and cap.fleet in fleets:
                short.append((need - free, cap.name, host_id))
        rooms = []
        for _, _, host_id in heapq.nsmallest(limit, short):
            host = self.hosts[host_id]
            free_blocks = frozenset(host.free & host.matching_of(gpu))
            rooms.append(
                Room(host_id, host.cap.name, group.need(host_id), free_blocks, host.matching_of(gpu))
            )
        return rooms

    def retell(self, job_id: str) -> None:
        """The job shows a reason of the coordinator's own (it waits for the jobs it preempted): give it its
        reason again at the next `settle()`. Idempotent."""
        key = self._group_of.get(job_id)
        if key is not None:
            self._groups[key].untell(job_id)
            self._rereason.add(key)

    # --- hosts and groups --------------------------------------------------------------------------

    def _add_host(self, cap: HostCapacity, free: set[int]) -> None:
        problem = unsound(cap)
        if problem is not None:
            self._leave_out(cap, problem)
            return
        try:
            host = _Host(cap)
            fits = {key: group.fit_on(cap) for key, group in self._groups.items()}
        except Exception as exc:
            self._leave_out(cap, failed_on(exc))
            return
        host.free = free
        self.hosts[cap.host_id] = host
        for key, need in fits.items():
            self._groups[key].fits[cap.host_id] = need
            if isinstance(need, int):
                host.groups.add(key)
        self._rereason.update(self._groups)  # the hosts named in "no host can ever fit" changed
        self._host_changed(host, helps=True)

    def _leave_out(self, cap: HostCapacity, why: str) -> None:
        self.remove_host(cap.host_id)
        self.skipped[cap.host_id] = why
        self._skipped_caps[cap.host_id] = cap

    def _host_changed(self, host: _Host, *, helps: bool) -> None:
        """Update the groups that fit the host; with `helps` (more free blocks, ready now), re-try them."""
        for key in host.groups:
            self._groups[key].update(host, self.reserved)
        self._rereason.update(host.groups)
        if helps and host.cap.ready:
            self._retry.update(host.groups)

    def _new_group(self, key: FitKey, job: PendingJob) -> _Group:
        group = _Group(job)
        for host_id, host in list(self.hosts.items()):
            try:
                need = group.fit_on(host.cap)
            except Exception as exc:
                self._leave_out(host.cap, failed_on(exc))
                continue
            group.fits[host_id] = need
            if isinstance(need, int):
                host.groups.add(key)
                group.update(host, self.reserved)
        return group

    def _rebar(self, key: FitKey) -> None:
        """After the group's first job changed: if it now stands behind another number of reservations,
        recount its reserved hosts; if behind fewer, re-try it (blocks it kept off may be its to use)."""
        group = self._groups[key]
        if not self.reserved.on or not group.jobs:
            return
        ahead = self.reserved.ahead(group.head()[:3])
        if ahead == group.ahead:
            return
        if ahead < group.ahead:
            self._retry.add(key)
        group.ahead = ahead
        for host_id in self.reserved.on:
            host = self.hosts.get(host_id)
            if host is not None and key in host.groups:
                group.update(host, self.reserved)
        self._rereason.add(key)

    def _drop_group(self, key: FitKey) -> None:
        group = self._groups.pop(key)
        for host_id in group.possible:
            self.hosts[host_id].groups.discard(key)
        self._retry.discard(key)
        self._rereason.discard(key)


def _same_shape(a: HostCapacity, b: HostCapacity) -> bool:
    """Whether two states of a host fit every request alike (they may differ in readiness, busy blocks)."""
    return _shape(a) == _shape(b)


def _shape(h: HostCapacity) -> tuple[object, ...]:
    return (h.name, h.fleet, h.projects, h.cluster, h.inventory)


def host_free(cap: HostCapacity) -> set[int]:
    return {b.index for b in cap.inventory.blocks} - cap.busy_blocks


class _Host:
    def __init__(self, cap: HostCapacity) -> None:
        self.cap = cap  # busy blocks are in `free`, not here
        self.free: set[int] = set()
        self.levels = block_levels(cap.inventory)
        self.groups: set[FitKey] = set()  # the groups whose request fits this host
        self._matching: dict[GpuRequest | None, frozenset[int]] = {}

    def matching_of(self, gpu: GpuRequest | None) -> frozenset[int]:
        if gpu not in self._matching:
            self._matching[gpu] = matching_blocks(gpu, self.cap.inventory)
        return self._matching[gpu]


class _Group:
    """The queued jobs of one request, and what the hosts can do for it."""

    def __init__(self, job: PendingJob) -> None:
        self.spec, self.project = job.spec, job.project  # all that fit and admits read
        self.jobs: dict[str, PendingJob] = {}
        self._order: list[tuple[int, float, int, str]] = []  # heap of (*job.order(), id); removed linger
        self.fits: dict[str, int | str] = {}  # host id -> blocks it needs there, or why it never fits
        self.possible: set[str] = set()  # hosts it fits, ready or not
        self.counts: dict[str, tuple[int, int]] = {}  # ready host it fits -> (free matching blocks, need)
        self._free_hosts: dict[int, int] = {}  # free matching blocks -> how many ready hosts have that many
        self._needs: dict[int, int] = {}  # need -> how many ready hosts
        self.ranking = Ranking()
        self.told = ""  # what its jobs were last told
        self._untold: dict[str, str] = {}  # job id -> what it was told, for jobs not told `told`
        self.noted: dict[str, str] = {}  # job id -> what its reservation adds to its reason
        self._said: dict[str, str] = {}  # job id -> what it was told, for jobs that had a note then
        self._renoted: set[str] = set()  # jobs whose note changed since they were told
        self.ahead = 0  # the reservations ahead of its first job (Reserved.ahead)
        self.held: set[str] = set()  # ready hosts that would take its first job now but for reservations

    def fit_on(self, cap: HostCapacity) -> int | str:
        return host_fit(cap, self.spec, self.project)

    def need(self, host_id: str) -> int:
        need = self.fits[host_id]
        assert isinstance(need, int)
        return need

    def add(self, job: PendingJob, told: str, note: str) -> None:
        self.jobs[job.job_id] = job
        heapq.heappush(self._order, (*job.order(), job.job_id))
        self._untold[job.job_id] = told
        if note:
            self.noted[job.job_id] = note

    def discard(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self._untold.pop(job_id, None)
        self.noted.pop(job_id, None)
        self._said.pop(job_id, None)
        self._renoted.discard(job_id)
        if len(self._order) > 2 * len(self.jobs) + 16:  # keep the lingering entries few
            self._order = [e for e in self._order if self._queued(e)]
            heapq.heapify(self._order)

    def head(self) -> tuple[int, float, int, str]:
        while not self._queued(self._order[0]):
            heapq.heappop(self._order)
        return self._order[0]

    def _queued(self, entry: tuple[int, float, int, str]) -> bool:
        job = self.jobs.get(entry[3])
        return job is not None and job.order() == entry[:3]

    def first(self) -> PendingJob:
        return self.jobs[self.head()[3]]

    def usable(self, host: _Host, reserved: Reserved) -> list[int]:
        """The host's free matching blocks the group's first job may take (`schedule()`'s `usable`)."""
        free = host.free & host.matching_of(self.spec.resources.gpu)
        host_id = host.cap.host_id
        if host_id in reserved.on:
            free -= reserved.hidden(host_id, self.ahead, self.spec.max_duration_s)
        return sorted(free)

    def update(self, host: _Host, reserved: Reserved) -> None:
        """Re-count the host: the free matching blocks its first job may take if it is ready and fits, and
        its rank."""
        host_id = host.cap.host_id
        self._uncount(host_id)
        need = self.fits.get(host_id)
        rank = None
        if isinstance(need, int):
            self.possible.add(host_id)
            if host.cap.ready:
                free = len(host.free & host.matching_of(self.spec.resources.gpu))
                if host_id in reserved.on:
                    usable = len(self.usable(host, reserved))
                    if usable < need <= free:  # it would fit but for blocks reserved ahead of it
                        self.held.add(host_id)
                    free = usable
                self.counts[host_id] = (free, need)
                _bump(self._free_hosts, free, 1)
                _bump(self._needs, need, 1)
                wasted = int(self.spec.resources.gpu is None and bool(host.cap.inventory.gpus))
                rank = (wasted, free - need) if free >= need else None
        self.ranking.put(host_id, host.cap.name, rank)

    def forget(self, host_id: str) -> None:
        self._uncount(host_id)
        self.ranking.put(host_id, "", None)
        self.fits.pop(host_id, None)
        self.possible.discard(host_id)

    def _uncount(self, host_id: str) -> None:
        self.held.discard(host_id)
        old = self.counts.pop(host_id, None)
        if old is not None:
            _bump(self._free_hosts, old[0], -1)
            _bump(self._needs, old[1], -1)

    def reason(self, hosts: Mapping[str, _Host]) -> str:
        """`schedule()`'s reason for a job of this group left pending."""
        if not hosts:
            return NO_HOSTS
        if not self.possible:
            return never_fits((h.cap for h in hosts.values()), self.fits)
        nodes = self.spec.nodes
        if nodes > 1 and (few := too_few_hosts(nodes, (hosts[h].cap.fleet for h in self.possible))):
            return few
        if not self.counts:
            return none_ready(hosts[h].cap for h in self.possible)
        held = held_off(self.spec.max_duration_s) if self.held else ""
        if nodes > 1:
            room = (hosts[h].cap.fleet for h, (free, need) in self.counts.items() if free >= need)
            return gang_busy(nodes, room) + held + unhealthy_notes(hosts[h].cap for h in self.counts)
        busy = too_busy(self.spec, min(self._needs), max(self._free_hosts))
        return busy + held + unhealthy_notes(hosts[h].cap for h in self.counts)

    def untell(self, job_id: str) -> None:
        self._untold[job_id] = ""  # no reason is empty: the next `tell` tells it

    def tell(self, reason: str, reasons: dict[str, str]) -> None:
        """Add to `reasons` the jobs whose reason changes to `reason` (with its reservation's note, for a
        reserved job)."""
        changed = self.jobs if reason != self.told else self._untold.keys() | self._renoted
        before = self._said
        if reason != self.told:
            self._said = {}
        for job_id in changed:
            note = self.noted.get(job_id, "")
            said = reason + note
            if self._untold.get(job_id, before.get(job_id, self.told)) != said:
                reasons[job_id] = said
            if note:
                self._said[job_id] = said
            else:
                self._said.pop(job_id, None)
        self.told = reason
        self._untold, self._renoted = {}, set()

    def note(self, job_id: str, note: str) -> None:
        """What the job's reservation adds to its reason from now on ("": it has none)."""
        if note:
            self.noted[job_id] = note
        else:
            self.noted.pop(job_id, None)
        self._renoted.add(job_id)


def _bump(counter: dict[int, int], key: int, by: int) -> None:
    counter[key] = counter.get(key, 0) + by
    if not counter[key]:
        del counter[key]
