"""The coordinator's core: jobs in, desired state out, actual state folded back in.

Level-triggered: each host has a desired-state index that goes up whenever what should run there changes.
A sync answers at once when the agent's index is behind, else waits for a change or the poll timeout.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from dataclasses import dataclass

from coordinator.accounts import Accounts, Invalid
from coordinator.disk import DiskGuard, DiskUsage, real_usage
from coordinator.filestore import FileStore
from coordinator.host_problems import INVENTORY, PROTOCOL, SCHEDULER, HostProblems
from coordinator.limits import BusyLimits
from coordinator.logstore import LogStore
from coordinator.quota import UploadQuota
from coordinator.safe_schedule import schedule_skipping
from coordinator.scheduler import HostCapacity, PendingJob
from coordinator.secrets import Secrets, ensure_key
from coordinator.store import AllocRow, HostRow, JobRow, Store
from coordinator.submit_rules import DEFAULT_PYTHON_IMAGE, apply_submit_rules, archive_ids
from coordinator.validate_inventory import inventory_problem
from coordinator.waiters import Waiters
from shared import constants as C
from shared import tls
from shared.spec import SpecError, TaskSpec, redacted, validate_spec
from shared.states import JOB_TRANSITIONS, AllocState, JobState, job_state_for
from shared.wire import (
    AllocationSpec,
    AllocationStatus,
    HostAllocationView,
    HostDetail,
    HostView,
    Inventory,
    JobView,
    SyncRequest,
    SyncResponse,
    generation_of,
)

log = logging.getLogger("gpuctl.coordinator")
LAST_SEEN_STORE_S = 60.0


@dataclass(frozen=True)
class Settings:
    poll_timeout_s: float = C.POLL_TIMEOUT_S
    sync_interval_s: float = C.SYNC_INTERVAL_S
    log_chunk_max_bytes: int = C.LOG_CHUNK_MAX_BYTES
    unreachable_after_s: float = C.HOST_UNREACHABLE_AFTER_S
    agent_cert_ttl_s: int = C.AGENT_CERT_TTL_S
    files_keep_s: float = C.FILES_KEEP_S
    python_image: str = DEFAULT_PYTHON_IMAGE  # the image of a `python: "3.11"` job; `{version}` is replaced
    log_cap_bytes: int = C.LOG_CAP_BYTES  # per allocation; 0: no cap
    upload_quota_bytes: int = C.UPLOAD_QUOTA_BYTES  # stored files archives per project; 0: no quota
    disk_floor_bytes: int = C.DISK_FLOOR_BYTES  # under this much free space, refuse new submits and uploads
    disk_floor_percent: float = 0.0  # or under this share of the disk, whichever is larger
    disk_usage: DiskUsage = real_usage
    protocol_version: str = C.PROTOCOL_VERSION  # agents within one minor version of it are served
    busy: BusyLimits = BusyLimits()  # requests at work per class; one more is answered 429 (busy.py)


class NotFound(LookupError):
    pass


class Ambiguous(LookupError):
    pass


class Coordinator:
    def __init__(
        self,
        store: Store,
        logs: LogStore,
        ca: tls.KeyPair,
        settings: Settings | None = None,
        *,
        files: FileStore | None = None,
    ) -> None:
        self.store = store
        self.ca = ca  # signs agent certificates (enrollment, renewal)
        self.accounts = Accounts(store)
        self.logs = logs
        self.files = files or FileStore(logs.root.parent / "files")  # job archives, beside the logs
        self.settings = settings or Settings()
        s = self.settings
        self.disk = DiskGuard(logs.root.parent, s.disk_floor_bytes, s.disk_floor_percent, s.disk_usage)
        self.quota = UploadQuota(store, s.upload_quota_bytes)
        self.secrets = Secrets(store, ensure_key(logs.root.parent))  # the key stays beside, not in, the db
        self.host_waiters = Waiters()  # key: host id
        self.log_waiters = Waiters()  # key: job id
        self.last_seen: dict[str, float] = {}  # by host id: its agent's latest request
        self._last_seen_stored: dict[str, float] = {}
        # Hosts whose agent runs an inventory generation not stored here (it sent none): nothing is placed
        # on them until it arrives. In memory, like liveness: the next sync says it again.
        self.unseen_generation: set[str] = set()
        self.problems = HostProblems()  # why a host takes no work, shown on it in `gpuctl hosts`

    # --- user side ---------------------------------------------------------------------------------

    def submit(self, spec: TaskSpec, project: str = "default") -> JobRow:
        """Accept a job of `project` (committed before the answer), then try to place it at once."""
        spec = apply_submit_rules(validate_spec(spec), self.settings.python_image)
        self.secrets.check(spec, project)
        for archive_id in archive_ids(spec):
            if not self.files.has(archive_id):
                raise SpecError(
                    "files", f"archive {archive_id[:12]} is not on the coordinator; upload it first"
                )
        for _ in range(5):
            job_id = secrets.token_hex(4)
            if self.store.get_job(job_id) is None:
                break
        name = spec.name or f"job-{job_id[:4]}"
        job = self.store.insert_job(job_id, name, spec, "waiting for the scheduler", project)
        log.info("job %s submitted (%s)", job.id, job.name)
        self.kick()  # the job is committed: from here on, no failure may make its submit an error
        fresh = self.store.get_job(job.id)
        assert fresh is not None
        return fresh

    def find_job(self, ref: str, project: str | None = None) -> JobRow:
        """By id, id prefix or name; only among `project`'s jobs if given (another project's job is not found)."""
        jobs = self.store.find_jobs(ref, project)
        exact = [j for j in jobs if j.id == ref]
        if exact:
            return exact[0]
        by_name = [j for j in jobs if j.name == ref]
        if by_name:
            return by_name[0]  # the newest job of that name, as docker and dstack resolve names
        if len(jobs) > 1:
            raise Ambiguous(f"{ref!r} matches {len(jobs)} jobs: " + ", ".join(j.id for j in jobs[:5]))
        if not jobs:
            raise NotFound(f"no job {ref!r}")
        return jobs[0]

    def stop(self, job: JobRow) -> JobRow:
        """Ask a job to stop. Idempotent: a finished job stays as it is."""
        if job.status.terminal:
            return job
        alloc = self.store.latest_allocation(job.id)
        with self.store.tx() as db:
            self.store.request_stop(db, job.id)
            if alloc is None or alloc.state.terminal:
                self.store.set_job_state(db, job, JobState.STOPPED, "stopped before it started")
            else:
                self.store.set_desired(db, alloc.id, "stop")
                self.store.bump_index(db, alloc.host_id)
        if alloc is not None:
            self.host_waiters.changed(alloc.host_id)
        self.log_waiters.changed(job.id)
        log.info("job %s stop requested", job.id)
        fresh = self.store.get_job(job.id)
        assert fresh is not None
        return fresh

    def job_view(self, job: JobRow) -> JobView:
        alloc = self.store.latest_allocation(job.id)
        host = self.store.get_host(alloc.host_id) if alloc else None
        return JobView(
            id=job.id,
            name=job.name,
            status=job.status.value,
            reason=job.reason,
            priority=job.priority,
            submitted_at=job.submitted_at,
            spec=redacted(job.spec),  # the registry password goes to the agent only
            host=host.name if host else None,
            gpus=alloc.gpus if alloc else (),
            blocks=alloc.blocks if alloc else (),
            allocation_id=alloc.id if alloc else None,
            exit_code=job.exit_code,
            started_at=job.started_at,
            finished_at=job.finished_at,
            stop_requested=job.stop_requested,
        )

    def host_views(self) -> list[HostView]:
        busy: dict[str, int] = {}
        for alloc in self.store.active_allocations():
            busy[alloc.host_id] = busy.get(alloc.host_id, 0) + len(alloc.blocks)
        return [self._host_view(h, busy.get(h.id, 0)) for h in self.store.list_hosts()]

    def host_detail(self, ref: str, project: str | None = None) -> HostDetail:
        """One host by name or id, with the allocations that hold its blocks; jobs of projects other than
        `project` (if given) show as busy blocks without their id or name. Raises NotFound, Ambiguous."""
        host = self.find_host(ref)
        allocations = []
        for alloc in self.store.active_allocations(host.id):
            job = self.store.get_job(alloc.job_id)
            visible = job is not None and (project is None or job.project == project)
            allocations.append(
                HostAllocationView(
                    allocation_id=alloc.id if visible else "",
                    job_id=alloc.job_id if visible else "",
                    job_name=job.name if job and visible else "(another project)",
                    status=alloc.state.value,
                    blocks=alloc.blocks,
                    gpus=alloc.gpus,
                    cpus=alloc.cpus,
                )
            )
        view = self._host_view(host, sum(len(a.blocks) for a in allocations))
        return HostDetail(host=view, allocations=allocations)

    def _host_view(self, h: HostRow, busy_blocks: int) -> HostView:
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

    def remove_host(self, host: HostRow) -> HostRow:
        """Revoke the host's certificates and take it out of scheduling; its jobs are lost. Idempotent."""
        revoked = self.accounts.revoke_host(host.id)
        with self.store.tx() as db:
            self.store.set_host_status(db, host.id, "removed")
            for alloc in self.store.active_allocations(host.id):
                self.store.update_allocation(db, alloc.id, AllocState.FAILED, None, "host removed", None)
                job = self.store.get_job(alloc.job_id)
                if job is not None and not job.status.terminal:
                    self.store.set_job_state(db, job, JobState.LOST, f"host {host.name} was removed")
            self.store.bump_index(db, host.id)
        self.host_waiters.changed(host.id)
        log.warning("host %s (%s) removed; %d certificates revoked", host.name, host.id, revoked)
        fresh = self.store.get_host(host.id)
        assert fresh is not None
        return fresh

    def host_status(self, host: HostRow) -> str:
        if host.status != "ready":
            return host.status
        seen = self.last_seen.get(host.id)
        if seen is None or time.time() - seen > self.settings.unreachable_after_s:
            return "unreachable"
        return "ready"

    def read_logs(self, job: JobRow, offset: int, max_bytes: int) -> tuple[bytes, bool]:
        """Bytes of the job's log from `offset`, and whether the log is complete (the job ended and every
        byte its agent reported has arrived)."""
        alloc = self.store.latest_allocation(job.id)
        if alloc is None:
            return b"", job.status.terminal
        data = self.logs.read(alloc.id, offset, max_bytes)
        end = offset + len(data)
        final = alloc.final_log_size
        if final is not None and self.settings.log_cap_bytes > 0:
            final = min(final, self.settings.log_cap_bytes)  # an agent that ignores the cap is cut there
        complete = job.status.terminal and (final is None or end >= final)
        if job.status.terminal and not complete:  # only then is the host worth a look: this runs per poll
            host = self.store.get_host(alloc.host_id)
            complete = host is not None and host.status == "removed"  # a removed host ships nothing more
        return data, complete

    # --- agent side --------------------------------------------------------------------------------

    async def sync(self, host_id: str, req: SyncRequest) -> SyncResponse:
        """Fold the agent's actual state in, then answer its desired state: at once if it changed since the
        index the agent saw, else after the next change or the poll timeout. Safe to retry."""
        host = self.store.ensure_host(host_id, req.inventory.hostname if req.inventory else host_id)
        changed = self.host_status(host) != "ready"  # a host that (re)appears may take pending work
        self._seen(host)
        if req.inventory is not None and generation_of(req.inventory) != host.generation:
            self._check_inventory(host_id, req.inventory)
            self.store.set_inventory(host_id, req.inventory, generation_of(req.inventory))
            log.info("host %s inventory generation %s", host_id, generation_of(req.inventory))
            changed = True
        unseen = self._note_generation(host_id, req, host.generation)
        changed |= self._fold_statuses(host_id, req.allocations)
        if changed:
            self.kick()
        host = self._host(host_id)
        if host.desired_index <= req.desired_index and not unseen:  # unseen: ask for the inventory now
            timeout = self.settings.poll_timeout_s * (1 + random.uniform(-1, 1) * C.POLL_JITTER_FRACTION)
            await self.host_waiters.wait(host_id, timeout)
            self._seen(host)
        return self._desired(self._host(host_id))

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

    def _seen(self, host: HostRow) -> None:
        """Note that the host's agent is there: in memory on every request, in the store (for `hosts` after
        a coordinator restart) at most once a minute, so a poll is not a disk write."""
        now = time.time()
        self.last_seen[host.id] = now
        if now - self._last_seen_stored.get(host.id, host.last_seen or 0.0) >= LAST_SEEN_STORE_S:
            self.store.set_last_seen(host.id, now)
            self._last_seen_stored[host.id] = now

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

    def _desired(self, host: HostRow) -> SyncResponse:
        allocations = []
        for alloc in self.store.active_allocations(host.id):
            job = self.store.get_job(alloc.job_id)
            assert job is not None
            allocations.append(
                AllocationSpec(
                    id=alloc.id,
                    job_id=job.id,
                    job_name=job.name,
                    desired=alloc.desired,
                    spec=self.secrets.resolve(job.spec, job.project),  # for the agent's eyes only
                    blocks=alloc.blocks,
                    gpus=alloc.gpus,
                    cpus=alloc.cpus,
                    memory_mib=alloc.memory_mib,
                    log_cap_bytes=self.settings.log_cap_bytes,
                )
            )
        return SyncResponse(
            host_id=host.id,
            index=host.desired_index,
            allocations=allocations,
            inventory_generation=host.generation,
            poll_timeout_s=self.settings.poll_timeout_s,
            sync_interval_s=self.settings.sync_interval_s,
            log_chunk_max_bytes=self.settings.log_chunk_max_bytes,
        )

    def _fold_statuses(self, host_id: str, statuses: list[AllocationStatus]) -> bool:
        """Record what the agent reports; True if an allocation ended (its blocks are free again)."""
        freed = False
        for status in statuses:
            alloc = self.store.get_allocation(status.id)
            if alloc is None or alloc.host_id != host_id or alloc.state.terminal:
                continue  # unknown here: absent from the desired state, so the agent stops and forgets it
            try:
                state = AllocState(status.state)
            except ValueError:
                log.warning(
                    "host %s reports allocation %s in unknown state %r", host_id, alloc.id, status.state
                )
                continue
            final = status.log_size if state.terminal else None
            reported = (state, status.exit_code, final, status.reason)
            if reported == (alloc.state, alloc.exit_code, alloc.final_log_size, alloc.reason):
                continue  # the same again; a new reason alone ("pulling 35%" → "pulling 60%") is news
            freed |= self._record(alloc, state, status, final)
        return freed

    def _record(
        self, alloc: AllocRow, state: AllocState, status: AllocationStatus, final: int | None
    ) -> bool:
        job = self.store.get_job(alloc.job_id)
        assert job is not None
        job_state = job_state_for(state, status.exit_code, job.stop_requested)
        reason = status.reason if job_state in (JobState.FAILED, JobState.PULLING, JobState.STOPPED) else ""
        with self.store.tx() as db:
            self.store.update_allocation(db, alloc.id, state, status.exit_code, status.reason, final)
            # Actual state may step back (a re-adopting agent says "starting" for a job we know runs); a job
            # only moves forward, so such a report updates the allocation and leaves the job as it is.
            if job_state in JOB_TRANSITIONS[job.status]:
                self.store.set_job_state(db, job, job_state, reason, status.exit_code)
            if state.terminal:
                self.store.bump_index(db, alloc.host_id)
        log.info("allocation %s of job %s: %s (exit %s)", alloc.id, job.id, state, status.exit_code)
        self.log_waiters.changed(job.id)
        return state.terminal

    def append_log(self, host_id: str, alloc_id: str, offset: int, data: bytes) -> int:
        alloc = self.store.get_allocation(alloc_id)
        if alloc is None or alloc.host_id != host_id:
            raise NotFound(f"no allocation {alloc_id!r} on this host")
        acked = self.logs.append(alloc_id, offset, data, self.settings.log_cap_bytes)
        self.log_waiters.changed(alloc.job_id)
        return acked

    def prune_files(self, now: float | None = None) -> list[str]:
        """Delete the uploaded archives that no job still to start or running names, once they are older
        than `files_keep_s` (an upload comes just before its submit; uploading again renews it). Runs with
        no await, so no submit can slip in between the look-up and the delete. Answers the ids deleted."""
        live = self.store.jobs_in(*(state for state in JobState if not state.terminal))
        keep = {archive_id for job in live for archive_id in archive_ids(job.spec)}
        removed = self.files.prune(keep, (now or time.time()) - self.settings.files_keep_s)
        self.quota.forget(removed)
        if removed:
            log.info("deleted %d files archive(s) no live job needs", len(removed))
        return removed

    # --- scheduling --------------------------------------------------------------------------------

    def kick(self) -> None:
        """A scheduling pass after a change that is already committed: a failure is logged (and the
        housekeeping loop tries again), never answered to the caller, whose change stands."""
        try:
            self.schedule_pass()
        except Exception:
            log.exception("scheduling pass failed; the next housekeeping beat tries again")

    def schedule_pass(self) -> int:
        """Place what fits and record a reason on every job that stays pending; a host the pass cannot
        use is left out and says why (`gpuctl hosts`). Returns placements made."""
        jobs = self.store.jobs_in(JobState.SUBMITTED, JobState.PENDING, JobState.RETRYING)
        if not jobs:
            return 0
        pending = [PendingJob(j.id, j.spec, j.seq, j.priority, j.project) for j in jobs]
        result, skipped = schedule_skipping(pending, self._capacity())
        self.problems.replace(SCHEDULER, skipped)
        by_id = {j.id: j for j in jobs}
        with self.store.tx() as db:
            for p in result.placements:
                alloc_id = "a-" + secrets.token_hex(6)
                self.store.insert_allocation(
                    db, alloc_id, p.job_id, p.host_id, p.blocks, p.gpus, p.cpus, p.memory_mib
                )
                self.store.set_job_state(db, by_id[p.job_id], JobState.ASSIGNED)
                self.store.bump_index(db, p.host_id)
            for job_id, reason in result.pending.items():
                self.store.set_job_state(db, by_id[job_id], JobState.PENDING, reason)
        for p in result.placements:
            log.info("job %s placed on %s blocks %s", p.job_id, p.host_id, list(p.blocks))
            self.host_waiters.changed(p.host_id)
            self.log_waiters.changed(p.job_id)
        return len(result.placements)

    def _capacity(self) -> list[HostCapacity]:
        busy: dict[str, set[int]] = {}
        for alloc in self.store.active_allocations():
            busy.setdefault(alloc.host_id, set()).update(alloc.blocks)
        limits = self.accounts.fleet_projects()
        return [
            HostCapacity(
                h.id,
                h.name,
                h.inventory,
                frozenset(busy.get(h.id, ())),
                self.host_status(h) == "ready"
                and h.id not in self.unseen_generation
                and not h.inventory.no_new_work
                and not self.problems.has(h.id, INVENTORY)
                and not self.problems.has(h.id, PROTOCOL),
                h.fleet,
                limits.get(h.fleet),
            )
            for h in self.store.list_hosts()
            if h.inventory is not None and h.status != "removed"
        ]
