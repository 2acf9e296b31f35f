"""Housekeeping of leases: the allocations of a host silent past `lost_after` are lost, and a host that
comes back gets back what was not placed again elsewhere (and stops what was)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from coordinator import leases
from coordinator.attempts import end_attempt, event_of
from coordinator.settings import Settings
from coordinator.store import AllocRow, HostRow, JobRow, Store
from coordinator.waiters import Waiters
from shared.states import AllocState, HostState, JobState, job_state_for
from shared.units import format_duration_s
from shared.wire import AllocationStatus

log = logging.getLogger("gpuctl.coordinator")
REVIVABLE = (JobState.LOST, JobState.RETRYING, JobState.PENDING)


class LostHosts:
    """Part of the Coordinator: what it holds is declared here, set in its __init__."""

    store: Store
    settings: Settings
    host_waiters: Waiters
    log_waiters: Waiters
    last_seen: dict[str, float]
    started_at: float

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        raise NotImplementedError

    def lease_s(self) -> float:
        raise NotImplementedError

    def silent_s(self, host_id: str, now: float | None = None) -> float:
        raise NotImplementedError

    def lapsed_hosts(self, since: float, now: float) -> set[str] | None:
        """The hosts whose lease ran out in (since, now]: from then they take no new work, a change that is
        only time passing, which the scheduler hears of from the housekeeping beat. None when the leases
        this coordinator's start gave out ran out then: every host not seen since did (a full re-sync)."""
        lease_s = self.lease_s()
        if since < self.started_at + lease_s <= now:
            return None
        return {host_id for host_id, seen in self.last_seen.items() if since < seen + lease_s <= now}

    def expire_leases(self, now: float | None = None) -> int:
        """Mark lost the allocations of hosts silent past their `lost_after` (the job's, its fleet's or
        the coordinator's); each job's retry policy decides what follows. Answers how many were lost.
        Only hosts that hold allocations can lose one, and liveness is in memory: a beat reads the
        active allocations, not every host of the fleet."""
        now = now or time.time()
        lease_s, lost = self.lease_s(), 0
        for host_id, allocs in _by_host(self.store.active_allocations()).items():
            silent_s = self.silent_s(host_id, now)
            if silent_s <= lease_s:
                continue
            host = self.store.get_host(host_id)
            if host is None or host.status == HostState.REMOVED:
                continue
            for alloc in allocs:
                job = self.store.get_job(alloc.job_id)
                assert job is not None
                fleet_s = self.settings.fleet_lost_after_s.get(host.fleet)
                if silent_s > leases.lost_after_s(job.spec.lost_after_s, fleet_s, self.settings.lost_after_s):
                    self._lose(host, alloc, job, silent_s)
                    lost += 1
        if lost:
            self.kick()
        return lost

    def _lose(self, host: HostRow, alloc: AllocRow, job: JobRow, silent_s: float) -> None:
        why = f"host {host.name} was silent for {format_duration_s(int(silent_s))}"
        with self.store.tx() as db:
            self.store.update_allocation(db, alloc.id, AllocState.LOST, None, why, None)
            latest = self.store.latest_allocation(job.id)
            if not job.status.terminal and latest is not None and latest.attempt == alloc.attempt:
                outcome = JobState.STOPPED if job.stop_requested else JobState.LOST
                end_attempt(self.store, db, job, alloc, outcome, event_of(JobState.LOST, ""), why)
            self.store.bump_index(db, host.id)
        log.warning("allocation %s of job %s lost: %s", alloc.id, job.id, why)
        self.host_waiters.changed(host.id)
        self.log_waiters.changed(job.id)

    def welcome_back(self, host_id: str, statuses: list[AllocationStatus]) -> set[str]:
        """The host reports allocations this coordinator marked lost: one whose job was not placed again
        (nor stopped) meanwhile is its own again, with the state reported, unless it is a node of a
        multi-node job (its peers were stopped); the others must stop. Answers
        the ids of those that still run and must stop (they go out as desired `stop`)."""
        stale: set[str] = set()
        for status in statuses:
            alloc = self.store.get_allocation(status.id)
            if alloc is None or alloc.host_id != host_id or alloc.state is not AllocState.LOST:
                continue
            try:
                state = AllocState(status.state)
            except ValueError:
                continue
            job = self.store.get_job(alloc.job_id)
            assert job is not None
            latest = self.store.latest_allocation(job.id)
            # A multi-node job's attempt ended with its node's loss, which stopped the other nodes (one fate):
            # the node alone must not take the job back.
            revivable = (
                job.status in REVIVABLE
                and not job.stop_requested
                and not alloc.interrupted
                and job.spec.nodes == 1
            )
            if revivable and latest is not None and latest.id == alloc.id and state is not AllocState.LOST:
                self._revive(alloc, job, state, status)
            elif not state.terminal:
                stale.add(alloc.id)
            elif alloc.final_log_size is None:  # it stopped: its log is whole, and it may be forgotten
                with self.store.tx() as db:
                    self.store.update_allocation(
                        db, alloc.id, AllocState.LOST, alloc.exit_code, alloc.reason, status.log_size
                    )
                    self.store.bump_index(db, host_id)
        return stale

    def _revive(self, alloc: AllocRow, job: JobRow, state: AllocState, status: AllocationStatus) -> None:
        final = status.log_size if state.terminal else None
        outcome = job_state_for(state, status.exit_code, job.stop_requested)
        with self.store.tx() as db:
            self.store.update_allocation(db, alloc.id, state, status.exit_code, status.reason, final)
            if state.terminal:
                reason = status.reason if outcome is not JobState.DONE else ""
                end_attempt(
                    self.store, db, job, alloc, outcome, event_of(outcome, ""), reason, status.exit_code
                )
            else:
                self.store.set_job_state(db, job, outcome)
            self.store.bump_index(db, alloc.host_id)
        log.info("allocation %s of job %s is back on its host: %s", alloc.id, job.id, state)
        self.host_waiters.changed(alloc.host_id)
        self.log_waiters.changed(job.id)


def _by_host(allocs: list[AllocRow]) -> dict[str, list[AllocRow]]:
    """Allocations grouped by host, each host's in the order given."""
    grouped: dict[str, list[AllocRow]] = {}
    for alloc in allocs:
        grouped.setdefault(alloc.host_id, []).append(alloc)
    return grouped
