"""The agent's side of the coordinator: the sync long poll (actual state folded in, desired state out)
and log chunks. Level-triggered: each host has a desired-state index that goes up whenever what should run
there changes; a sync answers at once when the agent's index is behind, else waits for a change or the
poll timeout (at most half the host's lease)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from typing import Any

from coordinator import leases, work_slot
from coordinator.accounting import Accounting
from coordinator.accounts import Accounts, Invalid
from coordinator.array_store import ArrayStore
from coordinator.attempts import end_attempt, event_of
from coordinator.db import Connection
from coordinator.group_commit import GroupCommit
from coordinator.health import held_after_report
from coordinator.host_ops import NotFound
from coordinator.host_problems import INVENTORY, HostProblems
from coordinator.links import Links
from coordinator.logstore import Logs
from coordinator.metrics import Meters
from coordinator.node_order import node_spec, waits_for
from coordinator.notify import Relay
from coordinator.readings import DeviceReadings
from coordinator.secrets import Secrets
from coordinator.settings import Settings
from coordinator.store import AllocRow, HostRow, JobRow, Store
from coordinator.validate_inventory import inventory_problem
from coordinator.waiters import Waiters
from shared import constants as C
from shared.describe import describe_unhealthy
from shared.states import JOB_TRANSITIONS, AllocState, JobState, job_state_for
from shared.wire import (
    AllocationSpec,
    AllocationStatus,
    Inventory,
    SyncRequest,
    SyncResponse,
    generation_of,
)

log = logging.getLogger("gpuctl.coordinator")


class AgentSide:
    """Part of the Coordinator: what it holds is declared here, set in its __init__."""

    store: Store
    arrays: ArrayStore
    settings: Settings
    accounts: Accounts
    logs: Logs
    secrets: Secrets
    problems: HostProblems
    links: Links
    host_waiters: Waiters
    log_waiters: Waiters
    last_seen: dict[str, float]
    _seen_unsaved: dict[str, float]
    unseen_generation: set[str]
    inventory_writes: GroupCommit[tuple[str, Inventory, str]]  # store.set_inventories, many hosts at once
    meters: Meters
    relay: Relay  # the other replicas hear which hosts this one saw (coordinator/notify.py)
    accounting: Accounting
    device_readings: DeviceReadings

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        raise NotImplementedError

    def lease_s(self) -> float:
        raise NotImplementedError

    def silent_s(self, host_id: str, now: float | None = None) -> float:
        raise NotImplementedError

    def welcome_back(self, host_id: str, statuses: list[AllocationStatus]) -> set[str]:
        raise NotImplementedError

    async def sync(self, host_id: str, req: SyncRequest) -> SyncResponse:
        """Fold the agent's actual state in, then answer its desired state: at once if it changed since the
        index the agent saw, else after the next change or the poll timeout. Safe to retry."""
        started = time.perf_counter()
        host = self.store.get_host(host_id) or self.store.ensure_host(
            host_id, req.inventory.hostname if req.inventory else host_id
        )
        changed = self.silent_s(host_id) > self.lease_s()  # a host that (re)appears may take pending work
        self._seen(host_id)
        self.links.note(host_id, req)
        self.device_readings.note(host, req, time.time())
        stale = self.welcome_back(host_id, req.allocations)
        if req.inventory is not None and generation_of(req.inventory) != host.generation:
            self._check_inventory(host_id, req.inventory)
            self._hold_unhealthy(host, req.inventory)
            work_slot.release_current()  # waiting for the disk, with the rest of the fleet, is not work
            await self.inventory_writes.put((host_id, req.inventory, generation_of(req.inventory)))
            log.info("host %s inventory generation %s", host_id, generation_of(req.inventory))
            changed = True
        await self.accounting.fold(host, req)  # before the statuses: the readings of what ends now count
        was_unseen = host_id in self.unseen_generation
        unseen = self._note_generation(host_id, req, host.generation)
        changed |= self._fold_statuses(host_id, req.allocations) or unseen != was_unseen
        if changed:
            self.kick(hosts=(host_id,))
        host = self._host(host_id)
        if host.desired_index <= req.desired_index and not unseen:  # unseen: ask for the inventory now
            waited = time.perf_counter()
            await self.host_waiters.wait(host_id, self._poll_timeout_s())
            self._seen(host_id)
            started += time.perf_counter() - waited
        answer = self._desired(self._host(host_id), stale)
        self.meters.syncs.inc()
        self.meters.sync_s.observe(time.perf_counter() - started)
        return answer

    def _poll_timeout_s(self) -> float:
        """At most half the lease, so a held agent renews it in time; with jitter."""
        timeout_s = leases.poll_timeout_s(self.settings.poll_timeout_s, self.lease_s())
        return timeout_s * (1 + random.uniform(-1, 1) * C.POLL_JITTER_FRACTION)

    def _check_inventory(self, host_id: str, inventory: Inventory) -> None:
        """Refuse an inventory that contradicts itself (Invalid: a 400 naming the field), and show why on
        the host; until a sound one arrives, nothing new is placed there."""
        problem = inventory_problem(inventory)
        if problem is None:
            self.problems.clear(host_id, INVENTORY)
            return
        self.problems.set(host_id, INVENTORY, f"inventory refused: {problem}")
        field, _, message = problem.partition(": ")
        raise Invalid(field, message)

    def _hold_unhealthy(self, host: HostRow, inventory: Inventory) -> None:
        """Hold the devices the agent reports unhealthy until the host is undrained (coordinator/health.py)."""
        held = held_after_report(host.unhealthy, inventory.unhealthy)
        if held != host.unhealthy:
            with self.store.tx() as db:
                self.store.set_unhealthy(db, host.id, held)
            log.warning("host %s: %s", host.name, describe_unhealthy(held))

    def _seen(self, host_id: str) -> None:
        """Note that the host's agent is there, in memory: a poll is not a disk write. The store learns
        it in batches (`unsaved_last_seen`), for `hosts` after a coordinator restart; the other replicas
        (if any) within a second."""
        now = time.time()
        self.last_seen[host_id] = now
        self._seen_unsaved[host_id] = now
        self.relay.seen(host_id)

    def unsaved_last_seen(self) -> dict[str, float]:
        """The hosts seen since the last call, with when; the caller stores them (`Store.set_last_seen`,
        off the event loop: ten thousand hosts are a few batches)."""
        seen, self._seen_unsaved = self._seen_unsaved, {}
        return seen

    def _host(self, host_id: str) -> HostRow:
        host = self.store.get_host(host_id)
        if host is None:
            raise NotFound(f"no host {host_id!r}")
        return host

    def _note_generation(self, host_id: str, req: SyncRequest, stored: str) -> bool:
        """Whether the agent runs an inventory generation this coordinator has not stored (it sent no
        inventory, believing we had it: a restored database, say). Such a host takes no new placements
        until its inventory arrives; the answer carries our generation, so the agent sends it at once."""
        unseen = req.inventory is None and req.inventory_generation != stored
        if unseen and host_id not in self.unseen_generation:
            log.warning(
                "host %s runs inventory generation %s, not %r stored here; placing nothing there until it "
                "sends it",
                host_id,
                req.inventory_generation,
                stored,
            )
        if unseen:
            self.unseen_generation.add(host_id)
        else:
            self.unseen_generation.discard(host_id)
        return unseen

    def _desired(self, host: HostRow, stale: set[str]) -> SyncResponse:
        """Its active allocations, and those it still runs that were lost and placed again (to stop); a
        node of a multi-node job that waits for its peers to start is left out until they have."""
        allocations = []
        lost = [a for a in self.store.allocations_in(AllocState.LOST, host.id) if a.id in stale]
        for alloc in self.store.active_allocations(host.id) + lost:
            job = self.store.get_job(alloc.job_id)
            assert job is not None
            attempt = self._attempt(alloc, job.spec.nodes)
            if alloc.desired == "run" and waits_for(job.spec, alloc, attempt):
                continue
            peers = self._peers(alloc, attempt) or self._dev_ssh(alloc)
            spec = node_spec(job.spec, alloc.node, peers.get("nodes_ips", (_internal_ip(host),)))
            allocations.append(
                AllocationSpec(
                    id=alloc.id,
                    job_id=job.id,
                    job_name=job.name,
                    desired="stop" if alloc.state.terminal else alloc.desired,
                    spec=self.secrets.resolve(spec, job.project),  # for the agent's eyes only
                    blocks=alloc.blocks,
                    gpus=alloc.gpus,
                    cpus=alloc.cpus,
                    memory_mib=alloc.memory_mib,
                    log_cap_bytes=self.settings.log_cap_bytes,
                    array=self.arrays.task_facts(job),
                    **peers,
                )
            )
        return SyncResponse(
            host_id=host.id,
            index=host.desired_index,
            allocations=allocations,
            inventory_generation=host.generation,
            poll_timeout_s=leases.poll_timeout_s(self.settings.poll_timeout_s, self.lease_s()),
            sync_interval_s=self.settings.sync_interval_s,
            log_chunk_max_bytes=self.settings.log_chunk_max_bytes,
            metrics_interval_s=self.settings.metrics_interval_s,
        )

    def _attempt(self, alloc: AllocRow, nodes: int) -> list[AllocRow]:
        """The nodes of a multi-node job's attempt that `alloc` is one of (empty for a one-node job)."""
        if nodes == 1:
            return []
        return [a for a in self.store.allocations_of(alloc.job_id) if a.attempt == alloc.attempt]

    def _peers(self, alloc: AllocRow, attempt: list[AllocRow]) -> dict[str, Any]:
        """A multi-node job's node facts: its rank, its attempt's hosts' internal IPs by rank, and what its
        nodes need to ssh to each other (its sshd port, the seed of its keys)."""
        if not attempt:
            return {}
        ranks = {a.node: a.host_id for a in attempt}
        ips = tuple(_internal_ip(self.store.get_host(ranks[rank])) for rank in sorted(ranks))
        ssh = {"ssh_port": alloc.ssh_port, "ssh_seed": self.secrets.job_ssh_seed(alloc.job_id)}
        facts = {"node_rank": alloc.node, "nodes_num": len(ranks), "master_addr": ips[0], "nodes_ips": ips}
        return {**facts, **ssh}

    def _dev_ssh(self, alloc: AllocRow) -> dict[str, Any]:
        """What a dev environment's sshd needs (its port on loopback, the seed of its keys); {} for a task."""
        if not alloc.ssh_port:
            return {}
        return {"ssh_port": alloc.ssh_port, "ssh_seed": self.secrets.job_ssh_seed(alloc.job_id)}

    def _fold_statuses(self, host_id: str, statuses: list[AllocationStatus]) -> bool:
        """Record what the agent reports, all of one sync in one transaction; True if an allocation ended
        (its blocks are free again).

        One commit per status was 28% of the coordinator's samples in a run of 1,000 `true` tasks on one
        host (py-spy: Store.tx's COMMIT, a WAL fsync each, eight a sync when eight jobs end together)."""
        news = []
        for status in statuses:
            found = self._news(host_id, status)
            if found is not None:
                news.append((*found, status))
        if not news:
            return False
        with self.store.tx() as db:
            recorded = [self._record(db, alloc, state, status) for alloc, state, status in news]
        for alloc, state, status in news:
            log.info("allocation %s of job %s: %s (exit %s)", alloc.id, alloc.job_id, state, status.exit_code)
            self.log_waiters.changed(alloc.job_id)
        for host_id in {h for ended, peer_hosts in recorded for h in peer_hosts}:
            self.host_waiters.changed(host_id)
        return any(ended for ended, _ in recorded)

    def _news(self, host_id: str, status: AllocationStatus) -> tuple[AllocRow, AllocState] | None:
        """The allocation and the state a status reports, if it says something new of one of this host's
        allocations still running here; else None."""
        alloc = self.store.get_allocation(status.id)
        if alloc is None or alloc.host_id != host_id or alloc.state.terminal:
            return None  # unknown here: absent from the desired state, so the agent stops and forgets it
        try:
            state = AllocState(status.state)
        except ValueError:
            log.warning("host %s reports allocation %s in unknown state %r", host_id, alloc.id, status.state)
            return None
        final = status.log_size if state.terminal else None
        if (state, status.exit_code, final, status.reason) == (
            alloc.state,
            alloc.exit_code,
            alloc.final_log_size,
            alloc.reason,
        ):
            return None  # the same again; a new reason alone ("pulling 35%" → "pulling 60%") is news
        return alloc, state

    def _record(
        self, db: Connection, alloc: AllocRow, state: AllocState, status: AllocationStatus
    ) -> tuple[bool, set[str]]:
        """Write one status in the caller's transaction. Answers whether the allocation ended, and the hosts
        of its multi-node peers whose desired state this changed (to wake once committed)."""
        final = status.log_size if state.terminal else None
        job = self.store.get_job(alloc.job_id)
        assert job is not None
        job_state = job_state_for(state, status.exit_code, job.stop_requested)
        reason = status.reason if job_state in (JobState.FAILED, JobState.PULLING, JobState.STOPPED) else ""
        if alloc.interrupted and state.terminal:  # stopped from outside (a drain --stop): say so
            job_state, reason = JobState.STOPPED, alloc.interrupted
        latest = self.store.latest_allocation(job.id)
        self.store.update_allocation(db, alloc.id, state, status.exit_code, status.reason, final)
        # Actual state may step back (a re-adopting agent says "starting" for a job we know runs); a job
        # only moves forward, so such a report updates the allocation and leaves the job as it is. An
        # attempt that was placed again elsewhere no longer speaks for its job, and neither does an allocation
        # being stopped from outside until it has ended (a multi-node job's peer stopped by a failed node
        # could otherwise say "running" once more and take back a job already retrying).
        if latest is not None and latest.attempt != alloc.attempt or alloc.interrupted and not state.terminal:
            pass
        elif state.terminal and job_state in JOB_TRANSITIONS[job.status]:
            event = event_of(job_state, alloc.interrupted)
            end_attempt(self.store, db, job, alloc, job_state, event, reason, status.exit_code)
        elif job_state in JOB_TRANSITIONS[job.status]:
            if job_state is JobState.RUNNING and job.started_at is None:
                self.meters.submit_to_running_s.labels(job.project).observe(time.time() - job.submitted_at)
            self.store.set_job_state(db, job, job_state, reason, status.exit_code)
        if state.terminal:
            self.store.bump_index(db, alloc.host_id)
        return state.terminal, self._peers_moved(db, job, alloc, state, status.exit_code)

    def _peers_moved(
        self, db: Connection, job: JobRow, alloc: AllocRow, state: AllocState, exit_code: int | None
    ) -> set[str]:
        """The hosts of a multi-node node's peers whose desired state its news changed: all of them when it
        ended (its attempt may have stopped them), and, when it first started, those its start lets start
        (their index goes up here, as stopping them raised it already)."""
        if job.spec.nodes == 1:
            return set()
        peers = [a for a in self._attempt(alloc, job.spec.nodes) if a.id != alloc.id]
        hosts = {a.host_id for a in peers}
        started = alloc.started_at is None and (state is AllocState.RUNNING or exit_code is not None)
        if started and job.spec.startup_order != "any":
            for host_id in hosts:
                self.store.bump_index(db, host_id)
            return hosts
        return hosts if state.terminal else set()

    def append_log(self, host_id: str, alloc_id: str, offset: int, data: bytes) -> int:
        alloc = self.store.get_allocation(alloc_id)
        if alloc is None or alloc.host_id != host_id:
            raise NotFound(f"no allocation {alloc_id!r} on this host")
        acked = self.logs.append(alloc_id, offset, data, self.settings.log_cap_bytes)
        job = self.store.get_job(alloc.job_id)
        self.meters.log_bytes.labels(job.project if job else "").inc(len(data))
        self.log_waiters.changed(alloc.job_id)
        return acked


def _internal_ip(host: HostRow | None) -> str:
    """The address the host's peers reach it by: its agent's report ("" if it reported none)."""
    return host.inventory.internal_ip if host is not None and host.inventory is not None else ""
