"""Preemption in the coordinator: in a fleet with `preemption: true`, a pending job that does not fit may stop
running jobs of strictly lower priority on one host there, so that it fits (which, preemption.py).

When: for the jobs a change names (a submit), and at each re-sync for the first PREEMPT_LOOKS requests that
do not fit; a look reads the running work of at most PREEMPT_HOSTS hosts (those that miss the fewest blocks),
so its cost grows with neither the queue nor the fleet. A multi-node job preempts nothing (all its hosts
would need room at once): it waits. It may be preempted: its nodes all stop, its attempt ends as one.

The victims are stopped as `hosts drain --stop` stops work: desired `stop` with the reason `preempted by job
X (priority P)`, an interruption for their retry policy. Each victim's allocation on the chosen host notes
the job it stops for (`stopping_for`); while one of them runs, that job waits with a reason that says so and
preempts nothing more. The note is cleared at the first settle after the allocation ended.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from coordinator.accounts import Accounts
from coordinator.leader import Leadership
from coordinator.live_schedule import LiveSchedule
from coordinator.preemption import Preemption, Running, choose
from coordinator.scheduler import PendingJob
from coordinator.store import Store
from coordinator.waiters import Waiters
from shared.describe import first_few
from shared.states import AllocState, JobState

log = logging.getLogger("gpuctl.coordinator")
PREEMPT_LOOKS = 4  # requests looked at per re-sync
PREEMPT_HOSTS = 16  # hosts looked at per request


class Preempting:
    """Part of the Coordinator: what it holds is declared here, set in its __init__."""

    store: Store
    accounts: Accounts
    leadership: Leadership
    live: LiveSchedule
    host_waiters: Waiters
    log_waiters: Waiters
    preemptible: frozenset[str]  # the fleets with `preemption: true`, as of the last re-sync
    waiting: dict[str, str]  # job id -> why it waits: jobs it preempted still run

    def note_waits(self) -> None:
        """Before a settle: which jobs wait for the jobs they preempted, and why; a job whose victims have
        all ended is told its own reason again. Reads only the allocations still noted."""
        rows = self.store.db.execute(
            "SELECT a.id, a.stopping_for, a.state, a.job_id, j.priority, h.name AS host"
            " FROM allocations a JOIN jobs j ON j.id = a.job_id JOIN hosts h ON h.id = a.host_id"
            " WHERE a.stopping_for IS NOT NULL ORDER BY a.created_at"
        ).fetchall()
        ended = [r["id"] for r in rows if AllocState(r["state"]).terminal]
        if ended:
            with self.store.tx() as db:
                db.executemany("UPDATE allocations SET stopping_for=NULL WHERE id=?", [(i,) for i in ended])
        victims: dict[str, list[str]] = {}
        hosts: dict[str, str] = {}
        for r in rows:
            if not AllocState(r["state"]).terminal:
                victims.setdefault(r["stopping_for"], []).append(f"{r['job_id']} (priority {r['priority']})")
                hosts[r["stopping_for"]] = r["host"]
        for job_id in self.waiting.keys() - victims.keys():
            self.live.retell(job_id)
        self.waiting = {job_id: waiting_reason(jobs, hosts[job_id]) for job_id, jobs in victims.items()}

    def preempt(self, jobs: Iterable[str] | None) -> None:
        """After a settle: make room by preemption for the named jobs still queued, or (None: at a re-sync,
        which reads the fleets' settings again) for the first requests that do not fit."""
        if jobs is None:
            self.preemptible = frozenset(n for n, f in self.accounts.fleets().items() if f.preemption)
        if not self.preemptible:
            return
        if jobs is None:
            queued = self.live.first_waiting(PREEMPT_LOOKS)
        else:
            queued = [j for j in map(self.live.queued, jobs) if j is not None]
        for job in queued:
            if job.spec.nodes > 1 or job.job_id in self.waiting:
                continue
            rooms = self.live.rooms(job.job_id, self.preemptible, PREEMPT_HOSTS)
            choice = choose(job.priority, [replace(r, running=self._running(r.host_id)) for r in rooms])
            if choice is not None:
                self._stop_for(job, choice)

    def _running(self, host_id: str) -> tuple[Running, ...]:
        """The host's running jobs that could stop (not stopping already), with their priorities."""
        running = []
        for alloc in self.store.active_allocations(host_id):
            job = self.store.get_job(alloc.job_id)
            if job is not None and alloc.desired == "run" and not alloc.interrupted:
                started_at = alloc.started_at or alloc.created_at
                running.append(Running(job.id, job.priority, started_at, frozenset(alloc.blocks)))
        return tuple(running)

    def _stop_for(self, job: PendingJob, choice: Preemption) -> None:
        """Stop the victims (every node of a multi-node one) for `job`, which waits for them, saying so."""
        why = f"preempted by job {job.job_id} (priority {job.priority})"
        touched: set[str] = set()
        with self.store.tx() as db:
            self.leadership.fence(db)  # a leader whose lease ended stops nothing (Fenced)
            for victim in choice.victims:
                for alloc in self.store.allocations_of(victim.job_id):
                    if alloc.state.terminal or alloc.desired == "stop":
                        continue
                    self.store.set_desired(db, alloc.id, "stop")
                    self.store.set_interrupted(db, alloc.id, why)
                    if alloc.host_id == choice.host_id:
                        db.execute("UPDATE allocations SET stopping_for=? WHERE id=?", (job.job_id, alloc.id))
                    self.store.bump_index(db, alloc.host_id)
                    touched.add(alloc.host_id)
            host = self.store.get_host(choice.host_id)
            host_name = host.name if host is not None else choice.host_id
            victims = [f"{v.job_id} (priority {v.priority})" for v in choice.victims]
            reason = waiting_reason(victims, host_name)
            row = self.store.get_job(job.job_id)
            if row is not None:
                self.store.set_job_state(db, row, JobState.PENDING, reason)
        self.waiting[job.job_id] = reason
        for host_id in touched:
            self.host_waiters.changed(host_id)
        for victim in choice.victims:
            self.log_waiters.changed(victim.job_id)
            log.info("job %s %s on %s", victim.job_id, why, host_name)
        self.log_waiters.changed(job.job_id)


def waiting_reason(victims: list[str], host: str) -> str:
    """The reason of a job that waits for the jobs it preempted to stop: one line, naming the first few."""
    jobs = "job" if len(victims) == 1 else "jobs"
    return f"waiting for preempted {jobs} {first_few(victims)} to stop on host {host}"
