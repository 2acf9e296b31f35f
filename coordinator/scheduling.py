"""Scheduling in the coordinator: the store's queue and fleet kept in a LiveSchedule that each change is told
of, its placements and changed reasons written back.

A change names what it touches (`kick(jobs=..., hosts=...)`): those hosts are read again from the store
(their row and active allocations; a job whose allocation there ended is read again too), those jobs pass
the one eligibility filter (`_eligible`) again, and only the requests they may help are re-tried. A kick
that names nothing, and the housekeeping beat, re-sync the whole state from the store (`schedule_pass`):
that corrects any drift, and picks up what time alone changes (a retry back-off over, a lease run out).

Two rules hold jobs back before placement: an array's `%N` limit (arrays.py) and a project's quota
(queue_policy.py). A change to a job of a project with a quota re-reads that project's head of the queue
(the jobs its quota lets in, and the first it holds), never the rest. The projects' fair-share factors are
recomputed at the re-sync only, and fixed between two (live_schedule.py says why that is enough).
After a settle, preemption may stop lower-priority work for the first jobs that do not fit (preempting.py).

Backfill (backfill.py): the reservations of the first `backfill_depth` waiting jobs are planned again, not at
each change (a plan reads the hosts that fit those jobs), but at the housekeeping beat and after a change that
made one stale (a reserved job left the queue, a job came to wait ahead of the planned ones), at most once
per `PLAN_MIN_INTERVAL_S` and at most `PLAN_LOOP_SHARE` of the time, as the beat's re-sync is held back. A
job's max_duration is judged against a reservation as from the time the next plan is due at the latest (the
interval, and one beat), so that a job placed while the plan stands still ends before the reserved start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Generator, Iterable

from coordinator.accounts import OPEN_FLEET, Accounts, FleetPolicy
from coordinator.array_store import ArrayStore
from coordinator.arrays import ArrayLoad, held_reason, within_limits
from coordinator.db import Connection
from coordinator.health import with_held
from coordinator.host_problems import INVENTORY, PROTOCOL, SCHEDULER, HostProblems
from coordinator.leader import Fenced, Leadership
from coordinator.live_schedule import LiveSchedule, Settled
from coordinator.metrics import Meters
from coordinator.notify import Relay
from coordinator.queue_policy import ProjectLoad, Quota, over_quota, within_quotas
from coordinator.retry import next_attempt_at, waited_too_long
from coordinator.scheduler import HostCapacity, PendingJob, Placement
from coordinator.settings import Settings
from coordinator.store import TERMINAL_ALLOC_STATES, HostRow, JobRow, Store, _job
from coordinator.usage import ProjectUsage
from coordinator.waiters import Waiters
from shared import constants as C
from shared.spec.dev_env import is_dev
from shared.states import HostState, JobState
from shared.units import format_duration_s
from shared.wire import QueueEntry

log = logging.getLogger("gpuctl.coordinator")
QUEUED = (JobState.SUBMITTED, JobState.PENDING, JobState.RETRYING)
PLAN_MIN_INTERVAL_S = 1.0  # a burst of changes that each make the plan stale re-plans once
PLAN_LOOP_SHARE = 0.02  # of the event loop's time, at most, for plans (10,000 full hosts: 0.3-0.6 s, bench a)
BEAT_S = 5.0  # the housekeeping beat's longest interval (server.py): a due plan is made by then


class Scheduling:
    """Part of the Coordinator: what it holds is declared here, set in its __init__."""

    store: Store
    settings: Settings
    accounts: Accounts
    problems: HostProblems
    host_waiters: Waiters
    log_waiters: Waiters
    unseen_generation: set[str]
    arrays: ArrayStore
    live: LiveSchedule
    live_synced: bool  # False until the first re-sync, and after a failed change: the next kick re-syncs
    jobs_on: dict[str, set[str]]  # host id -> the jobs with an active allocation there
    admitted: dict[str, set[str]]  # array id -> its tasks the `%N` limit let into the live state
    quotas: dict[str, Quota]  # the projects with a quota, as of the last re-sync (a change re-syncs)
    quota_admitted: dict[str, set[str]]  # project with a quota -> its jobs it let into the live state
    usage: ProjectUsage
    shares: dict[str, float]  # project -> fair-share factor, as of the last re-sync; absent: 1.0
    host_status: Callable[[HostRow], str]  # HostOps's; declared only, as Scheduling comes first
    waiting: dict[str, str]  # job id -> why it waits for the jobs it preempted (preempting.py)
    note_waits: Callable[[], None]  # Preempting's, which comes first
    preempt: Callable[[Iterable[str] | None], None]
    meters: Meters
    plan_due_at: float  # monotonic: no backfill plan before this (PLAN_MIN_INTERVAL_S, PLAN_LOOP_SHARE)
    leadership: Leadership  # only the leader schedules (coordinator/leader.py)
    relay: Relay  # a follower hands its kicks to the leader (coordinator/notify.py)

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        """Schedule after a change that is already committed, touching the named jobs and hosts (none
        named: a whole re-sync). A failure is logged (the housekeeping beat re-syncs), never answered to
        the caller, whose change stands. On a replica that does not lead, the leader is asked instead."""
        jobs, hosts = set(jobs), set(hosts)
        if not self.leadership.leads:
            self.relay.kick(jobs, hosts)
            return
        try:
            if not self.live_synced or not (jobs or hosts):
                self.schedule_pass()
                return
            self._refresh_hosts(hosts)
            self._refresh_jobs(jobs)
            self._settle()
            self.preempt(jobs)
        except Fenced as exc:
            self.live_synced = False
            log.warning("placements not written: %s", exc)
        except Exception:
            self.live_synced = False
            log.exception("scheduling failed; the next housekeeping beat tries again")

    def schedule_pass(self) -> int:
        """Re-sync the whole state from the store and place what fits; record a reason on every job that
        stays pending, where it changed. A host the scheduler cannot use is left out and says why (`gpuctl
        hosts`). Returns placements made."""
        now = time.time()
        self.quotas, self.shares = self.accounts.quotas(), self.usage.factors(now)
        rows = self._give_up_waiting(self.store.jobs_in(*QUEUED))
        queue = [j for j in rows if self._eligible(j, now)]
        queue, held = within_limits(queue, self.arrays.loads({j.array_id for j in queue if j.array_id}))
        queue.sort(key=lambda j: (-j.priority, j.seq))  # a project's queue order: fair share is equal in it
        gpus_of = {j.id: gpus_held(j) for j in queue if j.project in self.quotas}
        queue, over = within_quotas(queue, gpus_of, self.quotas, self._loads(set(self.quotas)))
        self.admitted, self.quota_admitted = {}, {}
        for job in queue:
            if job.array_id is not None:
                self.admitted.setdefault(job.array_id, set()).add(job.id)
            if job.project in self.quotas:
                self.quota_admitted.setdefault(job.project, set()).add(job.id)
        self._hold(rows, held | over)
        told = {j.id: _told(j) for j in queue}
        self.live_synced = False  # until this re-sync's placements are written: a failure re-syncs again
        self.live.sync([self._pending(j) for j in queue], self._capacity(), told)
        placed = self._settle(beat=True)
        self.preempt(None)
        self.live_synced = True
        return placed

    def replan(self) -> None:
        """Plan the backfill reservations again from the hosts and queue as they are, and hand them to the
        scheduler (the next settle places by them)."""
        started = time.monotonic()
        now = time.time()
        reservations = self.live.plan(self._ends(), now, self.settings.backfill_depth)
        interval_s = max(PLAN_MIN_INTERVAL_S, (time.monotonic() - started) / PLAN_LOOP_SHARE)
        self.plan_due_at = time.monotonic() + interval_s
        self.live.set_reservations(reservations, now + interval_s + BEAT_S)

    def plan_backfill(self) -> None:
        """The housekeeping beat between re-syncs: plan the reservations again if a plan is due (time alone
        moves their starts), and place what that lets fit. A failure is logged, as a kick's."""
        if not self.live_synced or time.monotonic() < self.plan_due_at:
            return
        try:
            self.replan()
            self._place()
        except Exception:
            self.live_synced = False
            log.exception("backfill planning failed; the next housekeeping beat tries again")

    def estimated_start(self, job: JobRow) -> float | None:
        """When a waiting job's reservation expects it to start, if it has one with a known start."""
        reservation = self.live.reserved.by_job.get(job.id)
        return reservation.start if reservation is not None and job.status in QUEUED else None

    def _ends(self) -> dict[str, dict[int, float]]:
        """Each busy block's estimated end (its allocation's placement plus its job's max_duration), by host;
        the blocks of a job without max_duration are absent (their end is not known)."""
        ended = ",".join("?" * len(TERMINAL_ALLOC_STATES))
        rows = self.store.db.execute(
            "SELECT a.host_id, a.blocks, a.created_at + json_extract(j.spec, '$.max_duration_s') AS ends_at"
            f" FROM allocations a JOIN jobs j ON j.id = a.job_id WHERE a.state NOT IN ({ended})"
            " AND json_extract(j.spec, '$.max_duration_s') IS NOT NULL",
            TERMINAL_ALLOC_STATES,
        ).fetchall()
        ends: dict[str, dict[int, float]] = {}
        for row in rows:
            on = ends.setdefault(row["host_id"], {})
            on.update((b, row["ends_at"]) for b in json.loads(row["blocks"]))
        return ends

    def queue_entries(self, project: str | None) -> list[QueueEntry]:
        """The waiting jobs (only `project`'s if given) in the order the scheduler tries them, with what
        orders them. Reads the whole queue: for people, not for the scheduler."""
        jobs = [j for j in self.store.jobs_in(*QUEUED) if project is None or j.project == project]
        jobs.sort(key=lambda j: self._pending(j).order())
        return [
            QueueEntry(
                id=j.id,
                name=j.name,
                project=j.project,
                status=j.status.value,
                priority=j.priority,
                fair_share=self.shares.get(j.project, 1.0),
                submitted_at=j.submitted_at,
                reason=j.reason,
                estimated_start=self.estimated_start(j),
            )
            for j in jobs
        ]

    def _eligible(self, job: JobRow, now: float) -> bool:
        """The one filter between the queue and the scheduler: a job waiting to start, unless its retry
        back-off is not over. A rule that holds jobs back joins here; when what held a job back ends, a
        `kick(jobs=...)` naming it lets it in."""
        if job.status in (JobState.SUBMITTED, JobState.PENDING):
            return True
        return job.status is JobState.RETRYING and self._retry_due(job, now)

    def _retry_due(self, job: JobRow, now: float) -> bool:
        """Whether a retrying job's back-off is over (the housekeeping beat places it then)."""
        ended = [a.finished_at for a in self.store.allocations_of(job.id)]
        due = next_attempt_at(
            ended, job.retry_since, self.settings.retry_delay_s, self.settings.retry_delay_max_s
        )
        return now >= due

    def _refresh_jobs(self, job_ids: Iterable[str]) -> None:
        now = time.time()
        rows = {job_id: self.store.get_job(job_id) for job_id in job_ids}
        quota_bound = {j.project for j in rows.values() if j is not None and j.project in self.quotas}
        rows = {i: j for i, j in rows.items() if j is None or j.project not in quota_bound}
        limited = self.arrays.loads({j.array_id for j in rows.values() if j is not None and j.array_id})
        for job_id, job in rows.items():
            if job is not None and job.array_id in limited:
                continue  # its array's `%N` limit decides, below
            if job is not None and self._eligible(job, now):
                self.live.add_job(self._pending(job), _told(job))
            else:
                self.live.remove_job(job_id)
        for array_id, load in limited.items():
            self._refresh_array(array_id, load, now)
        for project in quota_bound:  # its quota decides, and its arrays' limits with it
            self._refresh_project(project, self.quotas[project], now)

    def _refresh_project(self, project: str, quota: Quota, now: float) -> None:
        """Let the first waiting jobs of a project with a quota into the live state, as many as its placed
        jobs leave room for (an array's `%N` limit still applies to its tasks), and hold the others. Reads
        the jobs it lets in and the first it holds: the cost of a change does not grow with the rest of
        the queue (the others' reasons are set in one statement)."""
        load = self._loads({project}).get(project, ProjectLoad())
        room: dict[str, ArrayRoom] = {}  # by array id, as its tasks come
        let_in: list[JobRow] = []
        first_held: JobRow | None = None
        why = ""
        with contextlib.closing(self._queued_of(project)) as queued:
            for job in queued:
                if not self._eligible(job, now) or not self._array_room(job, room):
                    continue
                why = over_quota(project, quota, load, gpus_held(job))
                if why:
                    first_held = job
                    break
                load = ProjectLoad(load.gpus + gpus_held(job), load.jobs + 1)
                let_in.append(job)
        ids = {j.id for j in let_in}
        for job_id in self.quota_admitted.pop(project, set()) - ids:
            self.live.remove_job(job_id)
        for job in let_in:
            self.live.add_job(self._pending(job), _told(job))
        if ids:
            self.quota_admitted[project] = ids
        for array_id, array in room.items():
            if array.load is not None and array.held:
                self.arrays.hold_rest(array_id, ids, held_reason(array.load.limit))
        if first_held is not None:
            self._hold_from(first_held, why)

    def _array_room(self, job: JobRow, room: dict[str, ArrayRoom]) -> bool:
        """Whether the job's array (if it has a `%N` limit) lets it in; counts it in `room` if so."""
        if job.array_id is None:
            return True
        if job.array_id not in room:
            room[job.array_id] = ArrayRoom(self.arrays.loads({job.array_id}).get(job.array_id))
        return room[job.array_id].take()

    def _refresh_array(self, array_id: str, load: ArrayLoad, now: float) -> None:
        """Let the first waiting tasks of an array with a `%N` limit into the live state, as many as its
        placed tasks leave room for, and hold the others. Reads the tasks up to the last one let in (the
        others' reasons are set in one statement): the cost of a change does not grow with the rest of the
        queue."""
        room = load.limit - load.active
        rows, queue = [], []
        for job in self.arrays.queued_tasks(array_id):  # in queue order, read in pages
            rows.append(job)
            if self._eligible(job, now):  # a task waiting out its retry back-off takes no room
                queue.append(job)
            if len(queue) >= room:
                break
        queue, _ = within_limits(queue, {array_id: load})
        let_in = {j.id for j in queue}
        for job_id in self.admitted.pop(array_id, set()) - let_in:
            self.live.remove_job(job_id)
        for job in rows:
            if job.id not in let_in:
                self.live.remove_job(job.id)
        for job in queue:
            self.live.add_job(self._pending(job), _told(job))
        if let_in:
            self.admitted[array_id] = let_in
        self.arrays.hold_rest(array_id, let_in, held_reason(load.limit))

    def _pending(self, job: JobRow) -> PendingJob:
        share = self.shares.get(job.project, 1.0)
        return PendingJob(job.id, job.spec, job.seq, job.priority, job.project, share)

    def _loads(self, projects: set[str]) -> dict[str, ProjectLoad]:
        """GPUs and jobs placed now (an allocation not yet ended holds its GPUs) of each of `projects`.
        Reads their unfinished jobs' allocations, not the history."""
        unfinished = [s.value for s in JobState if not s.terminal]
        ended = ",".join("?" * len(TERMINAL_ALLOC_STATES))
        rows = self.store.db.execute(
            "SELECT j.project, COALESCE(SUM(json_array_length(a.gpus)), 0) AS gpus,"
            " COUNT(DISTINCT a.job_id) AS jobs FROM jobs j JOIN allocations a ON a.job_id = j.id"
            " WHERE j.project IN (SELECT value FROM json_each(?))"
            f" AND j.status IN ({','.join('?' * len(unfinished))}) AND a.state NOT IN ({ended})"
            " GROUP BY j.project",
            (json.dumps(sorted(projects)), *unfinished, *TERMINAL_ALLOC_STATES),
        ).fetchall()
        return {r["project"]: ProjectLoad(r["gpus"], r["jobs"]) for r in rows}

    def _queued_of(self, project: str) -> Generator[JobRow, None, None]:
        """The project's waiting jobs in queue order, read as they are asked for."""
        cursor = self.store.db.execute(
            "SELECT * FROM jobs WHERE project=? AND status IN ('submitted','pending','retrying')"
            " ORDER BY priority DESC, seq",
            (project,),
        )
        try:
            while rows := cursor.fetchmany(64):
                yield from map(_job, rows)
        finally:
            cursor.close()

    def _hold_from(self, first: JobRow, reason: str) -> None:
        """Mark the project's waiting jobs from `first` on (in queue order) pending with `reason`, where
        they are not so yet (a retrying job keeps its state until its back-off is over)."""
        with self.store.tx() as db:
            db.execute(
                "UPDATE jobs SET status='pending', reason=? WHERE project=? AND status IN ('submitted','pending')"
                " AND NOT (status='pending' AND reason=?) AND (priority < ? OR (priority = ? AND seq >= ?))",
                (reason, first.project, reason, first.priority, first.priority, first.seq),
            )

    def _hold(self, rows: list[JobRow], held: dict[str, str]) -> None:
        """Write the reason of each job an array's limit or a project's quota holds back, where it changed."""
        changed = [
            j for j in rows if j.id in held and (j.reason != held[j.id] or j.status is not JobState.PENDING)
        ]
        if not changed:
            return
        with self.store.tx() as db:
            for job in changed:
                self.store.set_job_state(db, job, JobState.PENDING, held[job.id])

    def _refresh_hosts(self, host_ids: Iterable[str]) -> None:
        """Read the hosts again; a job whose allocation on one of them ended or began (a returning host's
        job revived there) is read again too."""
        host_ids = list(host_ids)
        fleets = self.accounts.fleets() if host_ids else {}
        moved: set[str] = set()
        for host_id in host_ids:
            row, active = self.store.get_host(host_id), self.store.active_allocations(host_id)
            busy = frozenset(b for a in active for b in a.blocks)
            if row is None or row.inventory is None or row.status == HostState.REMOVED:
                self.live.remove_host(host_id)
            else:
                self.live.set_host(self._host_capacity(row, busy, fleets.get(row.fleet, OPEN_FLEET)))
            now_on = {a.job_id for a in active}
            moved |= self.jobs_on.pop(host_id, set()) ^ now_on
            if now_on:
                self.jobs_on[host_id] = now_on
        self._refresh_jobs(moved)

    def _settle(self, *, beat: bool = False) -> int:
        """Place what fits now and write it; then, if the backfill plan is stale (or at the beat) and a new
        one is due, plan again and place what that lets fit. Returns placements made."""
        placed = self._place()
        if (beat or self.live.replan_wanted) and time.monotonic() >= self.plan_due_at:
            self.replan()
            placed += self._place()
        return placed

    def _place(self) -> int:
        """Place what fits now and write it; a placement whose job left the queue unseen (stopped) is not
        written, and its host is read again so its blocks come back. Returns placements made."""
        placed = 0
        self.note_waits()
        while True:
            settled = self.live.settle()
            self.problems.replace(SCHEDULER, self.live.skipped)
            stale = self._write(settled)
            placed += len(settled.placements) - len(stale)
            if not stale:
                return placed
            self._refresh_hosts({p.host_id for p in stale})
            self._refresh_jobs({p.job_id for p in stale})  # back in the queue, unless it left it

    def _write(self, settled: Settled) -> list[Placement]:
        """Allocations for the placements, reasons that changed; answers the placements not written: those
        whose job left the queue unseen (stopped), or whose host stopped taking work with no change to say
        so (its lease ran out, its inventory was refused) — time alone changes that, so it is checked here,
        at the one place where a placement becomes real. A multi-node job's nodes are written all or none."""
        stale, written = [], []
        by_job: dict[str, list[Placement]] = {}
        for p in settled.placements:
            by_job.setdefault(p.job_id, []).append(p)
        takes_work: dict[str, bool] = {}  # by host id: read once per settle, not once per placement

        def ready(host_id: str) -> bool:
            if host_id not in takes_work:
                host = self.store.get_host(host_id)
                takes_work[host_id] = host is not None and not self._not_ready(host)
            return takes_work[host_id]

        with self.store.tx() as db:
            self.leadership.fence(db)  # a leader whose lease ended writes nothing (Fenced)
            for job_id, nodes in by_job.items():
                job = self.store.get_job(job_id)
                if job is None or job.status not in QUEUED or not all(ready(p.host_id) for p in nodes):
                    stale.extend(nodes)
                    continue
                port = self._ssh_port(db, nodes, is_dev(job.spec))
                for p in nodes:
                    alloc_id = "a-" + secrets.token_hex(6)
                    self.store.insert_allocation(
                        db,
                        alloc_id,
                        p.job_id,
                        p.host_id,
                        p.blocks,
                        p.gpus,
                        p.cpus,
                        p.memory_mib,
                        p.node,
                        port,
                    )
                    self.store.bump_index(db, p.host_id)
                self.store.set_job_state(db, job, JobState.ASSIGNED)
                self.meters.queue_wait_s.labels(job.project).observe(time.time() - job.submitted_at)
                written.extend(nodes)
            for job_id, reason in settled.reasons.items():
                job = self.store.get_job(job_id)
                if job is not None and job.status in QUEUED:
                    reason = self.waiting.get(job_id, reason)  # it waits for the jobs it preempted
                    self.store.set_job_state(db, job, JobState.PENDING, reason)
        for p in written:
            self.jobs_on.setdefault(p.host_id, set()).add(p.job_id)
            log.info("job %s placed on %s blocks %s", p.job_id, p.host_id, list(p.blocks))
            self.host_waiters.changed(p.host_id)
            self.log_waiters.changed(p.job_id)
        return stale

    def _ssh_port(self, db: Connection, nodes: list[Placement], dev: bool) -> int:
        """A multi-node job's or a dev environment's sshd port: the first that no live allocation on any of
        its hosts holds (0 for a one-node task, or when all are held: its nodes then run without ssh)."""
        if len(nodes) == 1 and not dev:
            return 0
        held = self.store.ssh_ports_in_use(db, {p.host_id for p in nodes})
        first = self.settings.job_ssh_port_first
        free = (n for n in range(first, first + C.JOB_SSH_PORTS) if n not in held)
        return next(free, 0)

    def _give_up_waiting(self, jobs: list[JobRow]) -> list[JobRow]:
        """Fail the pending jobs whose `no-capacity` retry duration ran out; answers the others."""
        now, waiting = time.time(), []
        for job in jobs:
            if not waited_too_long(job.spec.retry, now, job.submitted_at, job.retry_since):
                waiting.append(job)
                continue
            with self.store.tx() as db:
                why = (
                    f"no capacity for {format_duration_s(job.spec.retry.duration_s if job.spec.retry else 0)}"
                )
                self.store.set_job_state(db, job, JobState.FAILED, f"{why}: {job.reason}")
            log.info("job %s failed: %s", job.id, why)
            self.log_waiters.changed(job.id)
        return waiting

    def _capacity(self) -> list[HostCapacity]:
        """Every host the scheduler may use, with its busy blocks; notes which jobs run where."""
        busy: dict[str, set[int]] = {}
        self.jobs_on = {}
        for alloc in self.store.active_allocations():
            busy.setdefault(alloc.host_id, set()).update(alloc.blocks)
            self.jobs_on.setdefault(alloc.host_id, set()).add(alloc.job_id)
        fleets = self.accounts.fleets()
        return [
            self._host_capacity(h, frozenset(busy.get(h.id, ())), fleets.get(h.fleet, OPEN_FLEET))
            for h in self.store.list_hosts()
            if h.inventory is not None and h.status != HostState.REMOVED
        ]

    def _host_capacity(self, h: HostRow, busy: frozenset[int], fleet: FleetPolicy) -> HostCapacity:
        assert h.inventory is not None
        why = self._not_ready(h)
        capacity = HostCapacity(
            h.id, h.name, h.inventory, busy, not why, h.fleet, fleet.projects, why, fleet.cluster
        )
        return with_held(capacity, h.unhealthy)  # its unhealthy devices' blocks idle alike in both schedulers

    def _not_ready(self, h: HostRow) -> str:
        """Why the host takes no new work now (shown in a pending job's reason), or "" when it does."""
        status = self.host_status(h)
        if status != "ready":
            return status
        if h.id in self.unseen_generation:
            return "its inventory is not here yet"
        if h.inventory is not None and h.inventory.no_new_work:
            return "its agent takes no new work (gpuctl hosts says why)"
        if self.problems.has(h.id, INVENTORY) or self.problems.has(h.id, PROTOCOL):
            return "refused (gpuctl hosts says why)"
        return ""


class ArrayRoom:
    """What an array's `%N` limit leaves room for while one project's queue is read in order."""

    def __init__(self, load: ArrayLoad | None) -> None:
        self.load = load  # None: no limit
        self.left = load.limit - load.active if load is not None else 0
        self.held = False  # whether it held a task back

    def take(self) -> bool:
        if self.load is None:
            return True
        self.left -= 1
        self.held = self.held or self.left < 0
        return self.left >= 0


def gpus_held(job: JobRow) -> int:
    """The GPUs a job holds once placed, as its quota counts them before: its request's maximum where it
    has one (a placement never gives more), else its minimum."""
    gpu = job.spec.resources.gpu
    if gpu is None:
        return 0
    return int(gpu.count.max if gpu.count.max is not None else gpu.count.min or 0)


def _told(job: JobRow) -> str:
    """The reason the job shows; none for a job not yet marked pending, so that it is marked."""
    return job.reason if job.status is JobState.PENDING else ""
