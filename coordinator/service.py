"""The coordinator's core: jobs in, desired state out, actual state folded back in.

This module holds the user's side (submit, stop, views, logs); scheduling is in scheduling.py, the agent's side (sync, log
chunks) is in agent_side.py, hosts (leases, drain, remove) in host_ops.py, lost allocations in lost.py, and
the pure policies beneath them in leases.py and retry.py.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import msgspec

from coordinator.accounting import Accounting
from coordinator.accounts import Accounts
from coordinator.agent_side import AgentSide
from coordinator.array_ops import ArrayOps
from coordinator.array_store import ArrayStore
from coordinator.attempts import NEVER_STARTED, attempt_views, held_reason, stop_attempt
from coordinator.disk import DiskGuard
from coordinator.filestore import Archives, FileStore
from coordinator.group_commit import GroupCommit
from coordinator.host_ops import Ambiguous, Busy, HostOps, NotFound
from coordinator.host_problems import HostProblems
from coordinator.leader import AlwaysLeader, Leadership
from coordinator.links import Links
from coordinator.live_schedule import LiveSchedule
from coordinator.logstore import Logs, LogStore
from coordinator.lost import LostHosts
from coordinator.metrics import Meters, StateCollector
from coordinator.notify import InProcess, Relay
from coordinator.preempting import Preempting
from coordinator.queue_policy import Quota
from coordinator.quota import UploadQuota
from coordinator.readings import DeviceReadings
from coordinator.schedule_store import ScheduleStore
from coordinator.schedules import ScheduleOps
from coordinator.scheduling import Scheduling
from coordinator.secrets import Secrets, ensure_key
from coordinator.settings import Settings
from coordinator.store import JobRow, Store
from coordinator.submit_rules import apply_submit_rules, archive_ids
from coordinator.usage import ProjectUsage
from coordinator.waiters import Waiters
from shared import tls
from shared.spec import SpecError, TaskSpec, redacted, validate_spec
from shared.states import ALLOC_UNKNOWN, JobState
from shared.units import format_duration_s
from shared.wire import (
    JobView,
)

log = logging.getLogger("gpuctl.coordinator")
__all__ = ["Ambiguous", "Busy", "Coordinator", "NotFound", "Settings"]


# The parts first, scheduling before the parts that call kick (preemption, which scheduling calls, before it);
# their stubs of each other come last.
class Coordinator(Preempting, Scheduling, HostOps, LostHosts, AgentSide, ScheduleOps, ArrayOps):
    def __init__(
        self,
        store: Store,
        logs: Logs,
        ca: tls.KeyPair,
        settings: Settings | None = None,
        *,
        files: Archives | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """`state_dir`: where the secrets key lives and whose disk is watched; by default the folder of a
        file log store, whose archives then go beside its logs."""
        if state_dir is None:
            assert isinstance(logs, LogStore), "a log store in the database needs the state dir named"
            state_dir = logs.root.parent
        self.store = store
        self.arrays = ArrayStore(store)
        self.schedules = ScheduleStore(store)
        self.ca = ca  # signs agent certificates (enrollment, renewal)
        self.accounts = Accounts(store)
        self.logs = logs
        self.state_dir = state_dir
        self.files = files or FileStore(state_dir / "files")
        self.settings = settings or Settings()
        s = self.settings
        self.disk = DiskGuard(state_dir, s.disk_floor_bytes, s.disk_floor_percent, s.disk_usage)
        self.quota = UploadQuota(store, s.upload_quota_bytes)
        self.secrets = Secrets(store, ensure_key(state_dir))  # the key stays beside, not in, the db
        self.host_waiters = Waiters()  # key: host id
        self.log_waiters = Waiters()  # key: job id
        self.last_seen: dict[str, float] = {}  # by host id: its agent's latest request
        self.links = Links()  # by host id: how its agent reaches us, and its last link failure
        self._seen_unsaved: dict[str, float] = {}  # by host id: seen since the store last heard of it
        # Hosts whose agent runs an inventory generation not stored here (it sent none): nothing is placed
        # on them until it arrives. In memory, like liveness: the next sync says it again.
        self.unseen_generation: set[str] = set()
        self.inventory_writes = GroupCommit(store.set_inventories)  # a fleet registering at once: one fsync
        self.problems = HostProblems()  # why a host takes no work, shown on it in `gpuctl hosts`
        self.started_at = time.time()  # every host counts as seen then: one full lease before it is judged
        self._host_count = (0.0, 0)
        self.live = LiveSchedule()  # the queue and fleet as the scheduler sees them (scheduling.py)
        self.live_synced = False
        self.admitted: dict[str, set[str]] = {}
        self.jobs_on: dict[str, set[str]] = {}
        self.quotas: dict[str, Quota] = {}
        self.quota_admitted: dict[str, set[str]] = {}
        self.usage = ProjectUsage(store, s.fair_share_half_life_s)  # fair share (queue_policy.py)
        self.accounting = Accounting(store)  # device readings per allocation, for `gpuctl usage`
        self.shares: dict[str, float] = {}
        self.preemptible: frozenset[str] = frozenset()  # preempting.py
        self.waiting: dict[str, str] = {}
        self.plan_due_at = 0.0
        self.device_readings = DeviceReadings()  # the agents' latest device readings, in memory
        self.meters = Meters()  # `/metrics`: events counted here, states read at each scrape
        self.meters.registry.register(StateCollector(self))
        # Replicas on PostgreSQL: only the leader schedules, and the others hear of each change (replication.py
        # sets both); alone on SQLite, this coordinator always leads and tells no one.
        self.leadership: Leadership = AlwaysLeader()
        self.relay: Relay = InProcess()

    def set_leading(self, leading: bool) -> None:
        """This replica became the leader, or stopped being it. Either way the scheduler's state in memory
        is dropped: a new leader loads it from the store, where the old one left it (its next kick
        re-syncs). A new leader gives every host one full lease before judging it, as a restarted
        coordinator does: the hosts' syncs reached the other replicas, and news of them may be late."""
        self.live, self.live_synced, self.plan_due_at = LiveSchedule(), False, 0.0
        self.admitted, self.jobs_on, self.quota_admitted, self.waiting = {}, {}, {}, {}
        if leading:
            self.started_at = time.time()
            self.kick()

    # --- user side ---------------------------------------------------------------------------------

    def submit(self, spec: TaskSpec, project: str = "default", user: str = "") -> JobRow:
        """Accept a job of `project` submitted by `user` (committed before the answer), then try to place it
        at once."""
        spec = self.accepted_spec(spec, project)
        for _ in range(5):
            job_id = secrets.token_hex(4)
            if self.store.get_job(job_id) is None:
                break
        name = spec.name or f"job-{job_id[:4]}"
        job = self.store.insert_job(job_id, name, spec, "waiting for the scheduler", project, user)
        log.info("job %s submitted (%s)", job.id, job.name)
        self.kick(
            jobs=(job.id,)
        )  # the job is committed: from here on, no failure may make its submit an error
        fresh = self.store.get_job(job.id)
        assert fresh is not None
        return fresh

    def accepted_spec(self, spec: TaskSpec, project: str) -> TaskSpec:
        """The spec as the coordinator runs it; SpecError naming the field if it may not run here."""
        spec = apply_submit_rules(validate_spec(spec), self.settings.python_image)
        self.secrets.check(spec, project)
        for archive_id in archive_ids(spec):
            if not self.files.has(archive_id):
                raise SpecError(
                    "files", f"archive {archive_id[:12]} is not on the coordinator; upload it first"
                )
        return spec

    def find_job(self, ref: str, project: str | None = None) -> JobRow:
        """By id, id prefix or name, or `ARRAY[INDEX]`; only among `project`'s jobs if given (another
        project's job is not found). A whole array is refused with the way to name one of its tasks; a
        schedule stands for its latest run."""
        return self.one_job(self.find_any(ref, project))

    def stop(self, job: JobRow) -> JobRow:
        """Ask a job to stop. Idempotent: a finished job stays as it is."""
        if job.status.terminal:
            return job
        self.stop_jobs([job])
        log.info("job %s stop requested", job.id)
        fresh = self.store.get_job(job.id)
        assert fresh is not None
        return fresh

    def stop_jobs(self, jobs: list[JobRow]) -> None:
        """Ask jobs that have not ended to stop, in one transaction (a whole array at once)."""
        hosts = set()
        with self.store.tx() as db:
            for job in jobs:
                alloc = self.store.latest_allocation(job.id)
                self.store.request_stop(db, job.id)
                if alloc is None or alloc.state.terminal:
                    self.store.set_job_state(db, job, JobState.STOPPED, NEVER_STARTED)
                else:
                    hosts |= stop_attempt(self.store, db, job, alloc)
        for host_id in hosts:
            self.host_waiters.changed(host_id)
        for job in jobs:
            self.log_waiters.changed(job.id)
        self.kick(jobs=[job.id for job in jobs])  # out of the queue

    def job_view(self, job: JobRow) -> JobView:
        allocs = self.store.allocations_of(job.id)
        alloc = next(a for a in allocs if a.attempt == allocs[-1].attempt) if allocs else None  # its node 0
        names = {h.id: h.name for h in map(self.store.get_host, {a.host_id for a in allocs}) if h}
        attempts = attempt_views(allocs, names, job.spec)
        reason, alloc_status = job.reason or held_reason(job.spec, allocs), alloc.state.value if alloc else ""
        if alloc is not None and not alloc.state.terminal:
            silent_s = self.silent_s(alloc.host_id)
            if silent_s > self.lease_s():  # its last reported state may be stale
                alloc_status = ALLOC_UNKNOWN
                reason = f"unreachable for {format_duration_s(int(silent_s))}"
                i = allocs.index(alloc)
                attempts[i] = msgspec.structs.replace(attempts[i], status=ALLOC_UNKNOWN, reason=reason)
        return JobView(
            id=job.id,
            name=job.name,
            status=job.status.value,
            reason=reason,
            priority=job.priority,
            submitted_at=job.submitted_at,
            spec=redacted(job.spec),  # the registry password goes to the agent only
            host=names.get(alloc.host_id) if alloc else None,
            gpus=alloc.gpus if alloc else (),
            blocks=alloc.blocks if alloc else (),
            allocation_id=alloc.id if alloc else None,
            exit_code=job.exit_code,
            started_at=job.started_at,
            finished_at=job.finished_at,
            stop_requested=job.stop_requested,
            attempt=alloc.attempt if alloc else 0,
            attempts=attempts,
            allocation_status=alloc_status,
            array_id=job.array_id or "",
            array_index=job.array_index,
            estimated_start=self.estimated_start(job),
        )

    def read_logs(
        self, job: JobRow, offset: int, max_bytes: int, attempt: int | None = None, node: int = 0
    ) -> tuple[bytes, bool]:
        """Bytes of the log of the job's attempt number `attempt` (default: its latest) from `offset`, and
        whether that log is complete (the attempt ended and every byte its agent reported has arrived).
        A multi-node job's attempt has one log per node (`node`: its rank). Raises NotFound for an attempt
        or a node the job has not had."""
        allocs = self.store.allocations_of(job.id)
        if attempt is not None:
            allocs = [a for a in allocs if a.attempt == attempt]
            if not allocs:
                raise NotFound(f"job {job.id} has no attempt {attempt}")
        if not allocs:
            return b"", job.status.terminal
        nodes = [a for a in allocs if a.attempt == allocs[-1].attempt]
        if node >= len(nodes):
            raise NotFound(f"job {job.id} has no node {node} (nodes: {len(nodes)})")
        alloc = next(a for a in nodes if a.node == node)
        latest = (attempt is None or self.store.latest_allocation(job.id) == alloc) and node == 0
        ended = job.status.terminal if latest else alloc.state.terminal
        data = self.logs.read(alloc.id, offset, max_bytes)
        end = offset + len(data)
        final = alloc.final_log_size
        if final is not None and self.settings.log_cap_bytes > 0:
            final = min(final, self.settings.log_cap_bytes)  # an agent that ignores the cap is cut there
        complete = ended and (final is None or end >= final)
        if ended and not complete:  # only then is the host worth a look: this runs per poll
            host = self.store.get_host(alloc.host_id)
            complete = host is not None and host.status == "removed"  # a removed host ships nothing more
        return data, complete

    def prune_files(self, now: float | None = None) -> list[str]:
        """Delete the uploaded archives that no job still to start or running (nor schedule) names, once they are older
        than `files_keep_s` (an upload comes just before its submit; uploading again renews it). Runs with
        no await, so no submit can slip in between the look-up and the delete. Answers the ids deleted."""
        live = self.store.jobs_in(*(state for state in JobState if not state.terminal))
        keep = {archive_id for job in live for archive_id in archive_ids(job.spec)} | self.schedule_archives()
        removed = self.files.prune(keep, (now or time.time()) - self.settings.files_keep_s)
        self.quota.forget(removed)
        if removed:
            log.info("deleted %d files archive(s) no live job needs", len(removed))
        return removed
