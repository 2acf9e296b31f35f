"""The hosts as users and admins see and change them: listing, leases (`unreachable`), drain, remove."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from coordinator import leases
from coordinator.accounts import Accounts
from coordinator.attempts import end_attempt
from coordinator.host_problems import HostProblems
from coordinator.links import Links
from coordinator.readings import DeviceReadings
from coordinator.retry import Event
from coordinator.settings import Settings
from coordinator.store import HostRow, Store
from coordinator.waiters import Waiters
from shared.states import AllocState, HostState, JobState
from shared.wire import HostAllocationView, HostDetail, HostView

log = logging.getLogger("gpuctl.coordinator")
HOST_COUNT_CACHE_S = 1.0


class NotFound(LookupError):
    pass


class Ambiguous(LookupError):
    pass


class Busy(Exception):
    """The change would end running work; the caller must say so (`--force`)."""


class HostOps:
    """Part of the Coordinator: what it holds is declared here, set in its __init__."""

    store: Store
    settings: Settings
    accounts: Accounts
    problems: HostProblems
    links: Links
    host_waiters: Waiters
    log_waiters: Waiters
    last_seen: dict[str, float]
    started_at: float
    device_readings: DeviceReadings
    _host_count: tuple[float, int]

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        raise NotImplementedError

    def lease_s(self) -> float:
        """`unreachable_after`, scaled up with the fleet (coordinator/leases.py)."""
        now = time.time()
        if now - self._host_count[0] > HOST_COUNT_CACHE_S:
            self._host_count = (now, self.store.count_hosts())
        return leases.unreachable_after_s(self.settings.unreachable_after_s, self._host_count[1])

    def silent_s(self, host_id: str, now: float | None = None) -> float:
        return leases.silent_s(now or time.time(), self.last_seen.get(host_id), self.started_at)

    def host_status(self, host: HostRow) -> str:
        """removed, unreachable (its lease ran out), draining or ready."""
        if host.status == HostState.REMOVED:
            return host.status
        if self.silent_s(host.id) > self.lease_s():
            return "unreachable"
        return host.status

    def host_states(self) -> list[str]:
        """Every host's status as `host_status` judges it, without reading inventories (`/metrics`)."""
        cutoff = time.time() - self.lease_s()  # silent since before it (`silent_s` > lease): unreachable
        seen, started_at = self.last_seen, self.started_at
        return [
            stored
            if stored == HostState.REMOVED or max(seen.get(host_id, 0.0), started_at) >= cutoff
            else "unreachable"
            for host_id, stored in self.store.host_statuses()
        ]

    def host_views(self) -> list[HostView]:
        busy: dict[str, int] = {}
        for alloc in self.store.active_allocations():
            busy[alloc.host_id] = busy.get(alloc.host_id, 0) + len(alloc.blocks)
        return [self._host_view(h, busy.get(h.id, 0)) for h in self.store.list_hosts()]

    def host_detail(self, ref: str, project: str | None = None) -> HostDetail:
        """One host by name or id, with the allocations that hold its blocks; jobs of projects other than
        `project` (if given) show as busy blocks without their id or name. Raises NotFound, Ambiguous."""
        host = self.find_host(ref)
        unknown = self.host_status(host) == "unreachable"
        allocations = []
        for alloc in self.store.active_allocations(host.id):
            job = self.store.get_job(alloc.job_id)
            visible = job is not None and (project is None or job.project == project)
            allocations.append(
                HostAllocationView(
                    allocation_id=alloc.id if visible else "",
                    job_id=alloc.job_id if visible else "",
                    job_name=job.name if job and visible else "(another project)",
                    status="unknown" if unknown else alloc.state.value,
                    blocks=alloc.blocks,
                    gpus=alloc.gpus,
                    cpus=alloc.cpus,
                )
            )
        view = self._host_view(host, sum(len(a.blocks) for a in allocations))
        return HostDetail(host=view, allocations=allocations)

    def _host_view(self, h: HostRow, busy_blocks: int) -> HostView:
        link = self.links.of(h.id)
        return HostView(
            id=h.id,
            name=h.name,
            status=self.host_status(h),
            inventory=h.inventory,
            busy_blocks=busy_blocks,
            total_blocks=len(h.inventory.blocks) if h.inventory else 0,
            last_seen=self.last_seen.get(h.id, h.last_seen),
            simulated=bool(h.inventory and h.inventory.simulated),
            warnings=self.problems.of(h.id),
            transport=link.transport,
            link_error=link.error,
            link_error_at=link.error_at,
            unhealthy=h.unhealthy,
        )

    def find_host(self, ref: str) -> HostRow:
        hosts = [h for h in self.store.list_hosts() if ref in (h.id, h.name)]
        if not hosts:
            raise NotFound(f"no host {ref!r}")
        if len(hosts) > 1:
            raise Ambiguous(
                f"{ref!r} names {len(hosts)} hosts; use the id: " + ", ".join(h.id for h in hosts)
            )
        return hosts[0]

    def remove_host(self, host: HostRow, force: bool = False) -> HostRow:
        """Revoke the host's certificates and take it out of scheduling. With work still on it, only with
        `force` (Busy otherwise): its jobs are lost, an interruption for their retry policy. Idempotent."""
        active = self.store.active_allocations(host.id)
        if active and not force and host.status != HostState.REMOVED:
            jobs = ", ".join(sorted({a.job_id for a in active}))
            raise Busy(
                f"host {host.name} still runs {len(active)} job(s) ({jobs}); drain it first "
                f"(gpuctl hosts drain {host.name}), or remove it with --force and they are lost"
            )
        revoked = self.accounts.revoke_host(host.id)
        with self.store.tx() as db:
            self.store.set_host_status(db, host, HostState.REMOVED)
            for alloc in active:
                why = f"host {host.name} was removed"
                self.store.update_allocation(db, alloc.id, AllocState.LOST, None, why, None)
                self.store.set_interrupted(db, alloc.id, why)
                job = self.store.get_job(alloc.job_id)
                if job is not None and not job.status.terminal:
                    outcome = JobState.STOPPED if job.stop_requested else JobState.LOST
                    end_attempt(self.store, db, job, alloc, outcome, Event.INTERRUPTION, why)
            self.store.bump_index(db, host.id)
        self.host_waiters.changed(host.id)
        self.device_readings.forget(host.id)
        for alloc in active:
            self.log_waiters.changed(alloc.job_id)
        log.warning("host %s (%s) removed; %d certificates revoked", host.name, host.id, revoked)
        self.kick(hosts=(host.id,))
        return self._fresh_host(host.id)

    def drain(self, host: HostRow, stop: bool = False) -> HostRow:
        """No new work on the host; what runs there finishes, or with `stop` is stopped now (with its grace
        period), an interruption for its retry policy. Idempotent."""
        with self.store.tx() as db:
            self.store.set_host_status(db, host, HostState.DRAINING)
            if stop:
                for alloc in self.store.active_allocations(host.id):
                    if alloc.desired != "stop":
                        self.store.set_desired(db, alloc.id, "stop")
                        self.store.set_interrupted(db, alloc.id, f"host {host.name} was drained with --stop")
                self.store.bump_index(db, host.id)
        self.host_waiters.changed(host.id)
        log.info("host %s drained%s", host.name, " (its jobs are stopped)" if stop else "")
        self.kick(hosts=(host.id,))  # no new work there, and the reasons of jobs that fit it say so
        return self._fresh_host(host.id)

    def undrain(self, host: HostRow) -> HostRow:
        """The host takes new work again; of its unhealthy devices, only those its agent still reports stay
        held (coordinator/health.py). Idempotent."""
        with self.store.tx() as db:
            self.store.set_host_status(db, host, HostState.READY)
            self.store.set_unhealthy(db, host.id, host.inventory.unhealthy if host.inventory else ())
        log.info("host %s takes work again", host.name)
        self.kick(hosts=(host.id,))
        return self._fresh_host(host.id)

    def _fresh_host(self, host_id: str) -> HostRow:
        host = self.store.get_host(host_id)
        if host is None:
            raise NotFound(f"no host {host_id!r}")
        return host
