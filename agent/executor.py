"""The one place that runs work: it applies the reconciler's actions through a runtime and watches what runs.

Each allocation has a folder under `<state_dir>/allocs/<id>/` that is its journal: `alloc.json` (the desired
spec), `output.log` (the log spool), `stop.json` (a stop was asked, and why), `shipped` (log bytes the
coordinator acknowledged), and the runtime's own files. A restarted agent rebuilds everything from these.
A forgotten allocation's folder moves to `<state_dir>/trash/`, where a background thread deletes it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgspec

from agent import logcap
from agent.env import job_env, write_mpi_hostfile
from agent.files import ROOT_FILES, FilePrep, has_inputs
from agent.reasons import public_reason
from agent.reconcile import Forget, Local, ReportGone, Start, Stop, reconcile
from agent.runtime.base import Observed, Runtime, RuntimeStartError
from shared.files import write_atomic
from shared.states import AllocState
from shared.wire import AllocationSpec, AllocationStatus, Inventory

log = logging.getLogger("gpuctl.agent")


@dataclass
class LocalAlloc:
    spec: AllocationSpec
    dir: Path
    started_at: float
    observed: Observed = field(default_factory=lambda: Observed(AllocState.STARTING))
    stop_reason: str = ""
    stop_asked_at: float | None = None
    acked: int = 0  # log bytes the coordinator holds

    @property
    def log_file(self) -> Path:
        return self.dir / "output.log"

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def stream_size(self) -> int:
        """Log bytes to ship: the spool, or its capped stream once over half the cap (agent/logcap.py)."""
        return logcap.stream_size(self.log_size(), self.spec.log_cap_bytes, self.observed.state.terminal)

    def status(self) -> AllocationStatus:
        obs = self.observed
        state = obs.state
        if self.stop_asked_at is not None and state is AllocState.EXITED:
            state = AllocState.STOPPED
        return AllocationStatus(
            id=self.spec.id,
            state=state.value,
            exit_code=obs.exit_code,
            reason=self.stop_reason if state is AllocState.STOPPED else obs.reason,
            log_size=self.stream_size(),
            started_at=self.started_at,
            finished_at=obs.finished_at,
        )


class Executor:
    def __init__(
        self,
        state_dir: Path,
        runtimes: Mapping[str, Runtime],
        inventory: Inventory,
        stop_grace_s: float,
    ) -> None:
        self.state_dir = state_dir
        self.root = state_dir / "allocs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.trash = state_dir / "trash"  # forgotten allocations' folders, until the cleaner deletes them
        self.trash.mkdir(mode=0o700, exist_ok=True)
        self._cleaner = ThreadPoolExecutor(1, thread_name_prefix="trash")
        self.runtimes = dict(runtimes)  # by name: "process", and "docker" where the engine answers
        self.inventory = inventory
        self.stop_grace_s = stop_grace_s
        self.allocs: dict[str, LocalAlloc] = {}
        self.gone: dict[str, AllocationStatus] = {}
        self.file_prep: FilePrep | None = None  # set once a coordinator client exists; stages `files:`

    def adopt(self) -> None:
        """Re-adopt what an earlier agent process left: running jobs keep running, ended ones get reported."""
        for path in sorted(self.root.iterdir()):
            try:
                spec = msgspec.json.decode((path / "alloc.json").read_bytes(), type=AllocationSpec)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignoring %s: no readable alloc.json", path)
                continue
            local = LocalAlloc(spec, path, path.joinpath("alloc.json").stat().st_mtime)
            try:
                if (path / "stop.json").exists():
                    stop = json.loads((path / "stop.json").read_text())
                    local.stop_reason, local.stop_asked_at = stop["reason"], stop["at"]
                if (path / "shipped").exists():
                    local.acked = int((path / "shipped").read_text() or 0)
            except (ValueError, KeyError, TypeError) as exc:  # a torn write: resend logs, keep going
                log.warning("allocation %s: unreadable journal file (%s)", spec.id, exc)
            local.observed = self._observe_one(local)
            self.allocs[spec.id] = local
            log.info("re-adopted allocation %s (%s)", spec.id, local.observed.state)
        for runtime in self.runtimes.values():
            runtime.sweep(set(self.allocs))
        for leftover in self.trash.iterdir():  # what an earlier agent forgot but had not deleted yet
            self._cleaner.submit(shutil.rmtree, leftover, ignore_errors=True)

    def runtime_for(self, spec: AllocationSpec) -> Runtime | None:
        """Docker for a job with an image, plain processes otherwise; None when this host lacks it."""
        return self.runtimes.get("docker" if spec.spec.image else "process")

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.close()
        self._cleaner.shutdown()

    def statuses(self) -> list[AllocationStatus]:
        """What the coordinator hears: every reason without the agent's own paths (agent/reasons.py), here,
        where it leaves the agent, so no place that builds a reason has to remember."""
        statuses = [a.status() for a in self.allocs.values()] + list(self.gone.values())
        return [msgspec.structs.replace(s, reason=public_reason(s.reason, self.state_dir)) for s in statuses]

    def step(self, desired: Sequence[AllocationSpec], now: float, fence: str = "") -> bool:
        """Observe, enforce deadlines, reconcile, act. True if anything the coordinator should hear changed.
        `fence`: stop everything with this reason and start nothing (agent/fence.py)."""
        before = self.statuses()
        self._observe(now)
        wanted = {a.id for a in desired}
        self.gone = {k: v for k, v in self.gone.items() if k in wanted}
        actual = {
            a.spec.id: Local(
                a.spec.id, a.observed.state, a.stop_asked_at is not None, a.acked >= a.stream_size()
            )
            for a in self.allocs.values()
        }
        started: list[LocalAlloc] = []
        for action in reconcile(desired, actual, fence):
            if isinstance(action, Start):
                started += self._start(action.alloc, now)
            elif isinstance(action, Stop):
                self._stop(self.allocs[action.alloc_id], action.reason, now)
            elif isinstance(action, Forget):
                self._forget(action.alloc_id)
            elif isinstance(action, ReportGone):
                self.gone[action.alloc_id] = AllocationStatus(
                    id=action.alloc_id, state=AllocState.FAILED.value, reason="this host has no record of it"
                )
        for local in started:  # after every start is asked for: a runtime may start them side by side
            self._started(local)
        return self._report_worthy(before) != self._report_worthy(self.statuses())

    @staticmethod
    def _report_worthy(statuses: list[AllocationStatus]) -> set[tuple[str, str, int | None, str]]:
        return {(s.id, s.state, s.exit_code, s.reason) for s in statuses}  # a reason: "pulling 35%"

    def _observe(self, now: float) -> None:
        for local in self.allocs.values():
            if local.observed.state.terminal:
                continue
            local.observed = self._observe_one(local)
            if local.observed.state.terminal:
                log.info("allocation %s ended: %s", local.spec.id, local.status().state)
                continue
            limit = local.spec.spec.max_duration_s
            if limit is not None and now - local.started_at > limit and local.stop_asked_at is None:
                self._stop(local, f"max_duration of {limit} s exceeded", now)
            if local.stop_asked_at is not None and now - local.stop_asked_at > self._grace_s(local):
                self._signal(local, kill=True)

    def _observe_one(self, local: LocalAlloc) -> Observed:
        runtime = self.runtime_for(local.spec)
        if runtime is None:
            # The engine is away (restarting, slow to start): its container may well run on, holding its
            # GPUs. Failing it would free them for another job; keep what we knew and look again later.
            return local.observed
        return runtime.observe(local.dir)

    def _grace_s(self, local: LocalAlloc) -> float:
        """The job's stop_duration, else the agent's default: SIGTERM, then SIGKILL after this."""
        own = local.spec.spec.stop_duration_s
        return self.stop_grace_s if own is None else float(own)

    def _signal(self, local: LocalAlloc, kill: bool) -> None:
        runtime = self.runtime_for(local.spec)
        if runtime is not None:
            runtime.signal_stop(local.dir, kill)

    def stop_everything(self, reason: str, now: float) -> bool:
        """Stop every allocation still running, as a desired `stop` would (SIGTERM, SIGKILL after its
        grace period). True once none runs. Idempotent: call it again until it returns True."""
        self._observe(now)
        running = [a for a in self.allocs.values() if not a.observed.state.terminal]
        for local in running:
            if local.stop_asked_at is None:
                self._stop(local, reason, now)
        return not running

    def _start(self, spec: AllocationSpec, now: float) -> list[LocalAlloc]:
        """Ask the runtime to start the allocation: [it], to observe once the step's starts are all asked
        for (`_started`); [] when it failed to start."""
        path = self.root / spec.id
        local = LocalAlloc(spec, path, now)
        self.allocs[spec.id] = local
        env = job_env(spec, self.inventory, str(path / "work"))
        runtime = self.runtime_for(spec)
        try:
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o711)  # jobs reach their own work dir by its path; none lists the allocations' files
            write_atomic(path / "alloc.json", msgspec.json.encode(spec), mode=0o600)  # env, registry password
            if runtime is None:
                raise RuntimeStartError("this host has no Docker engine for a job with an image")
            self._place_files(spec, path / "work")
            write_mpi_hostfile(spec, path / "work")
            runtime.start(spec, env, path, local.log_file)
        except (RuntimeStartError, OSError, subprocess.SubprocessError) as exc:  # a full disk fails one job
            self._failed_to_start(local, str(exc))
            return []
        return [local]

    def _started(self, local: LocalAlloc) -> None:
        runtime = self.runtime_for(local.spec)
        assert runtime is not None
        local.observed = runtime.observe(local.dir)  # a container may be pulling its image first
        if local.observed.state is AllocState.FAILED:
            self._failed_to_start(local, local.observed.reason)
            return
        log.info(
            "allocation %s of job %s started by %s (gpus %s)",
            local.spec.id,
            local.spec.job_id,
            runtime.name,
            list(local.spec.gpus),
        )

    @staticmethod
    def _failed_to_start(local: LocalAlloc, reason: str) -> None:
        local.observed = Observed(AllocState.FAILED, None, reason, time.time())
        log.warning("allocation %s failed to start: %s", local.spec.id, reason)

    def _place_files(self, spec: AllocationSpec, work_dir: Path) -> None:
        """Move the job's staged inputs in: its repos and `files:` as its working directory, its files at
        absolute paths beside it (see agent.files). Raises RuntimeStartError."""
        if not has_inputs(spec.spec):
            return
        prep = self.file_prep
        staged = prep.staged(spec.id) if prep is not None else None
        if prep is None or staged is None or not staged.is_dir():
            reason = prep.errors.get(spec.id) if prep is not None else None
            raise RuntimeStartError(reason or "files: the job's files and repos were not fetched")
        (staged / "work").rename(work_dir)  # the same file system: the state dir
        if (staged / ROOT_FILES).exists():
            (staged / ROOT_FILES).rename(work_dir.parent / ROOT_FILES)
        shutil.rmtree(staged, ignore_errors=True)

    def _stop(self, local: LocalAlloc, reason: str, now: float) -> None:
        """SIGTERM now; _observe sends SIGKILL once the grace period is over. Idempotent."""
        self._signal(local, kill=False)  # first: a full disk must not keep the job from stopping
        if local.stop_asked_at is None:
            local.stop_reason, local.stop_asked_at = reason, now
            log.info("stopping allocation %s: %s", local.spec.id, reason)
            write_atomic(local.dir / "stop.json", json.dumps({"reason": reason, "at": now}).encode())

    def _forget(self, alloc_id: str) -> None:
        """Release the allocation's runtime resources, then drop it. A release the kernel refuses for now
        (a cgroup that will not empty: a process stuck in the D state) keeps the allocation for the next
        tick, never ends the agent."""
        local = self.allocs[alloc_id]
        runtime = self.runtime_for(local.spec)
        if runtime is not None:
            try:
                runtime.release(local.dir)
            except OSError as exc:
                log.warning("allocation %s: cannot release it yet (%s); trying again", alloc_id, exc)
                return
        del self.allocs[alloc_id]
        self._discard(local.dir)
        log.info("forgot allocation %s", alloc_id)

    def _discard(self, folder: Path) -> None:
        """Take an allocation's folder out of the journal at once (a rename into trash/), and delete it
        off the event loop: rmtree there was 22% of the agent's wall time in a run of 400 `true` jobs on
        one host (py-spy), every start and report waiting behind it."""
        try:
            folder = folder.rename(self.trash / folder.name)
        except OSError:  # not there, or a name taken in trash/: delete it here
            shutil.rmtree(folder, ignore_errors=True)
            return
        self._cleaner.submit(shutil.rmtree, folder, ignore_errors=True)

    def record_acked(self, alloc_id: str, acked: int) -> None:
        local = self.allocs.get(alloc_id)
        if local is not None and acked != local.acked:
            local.acked = acked
            write_atomic(local.dir / "shipped", str(acked).encode())

    def busy_gpus(self) -> set[int]:
        """The GPU indices that allocations not yet ended hold (simulated readings show them working)."""
        return {gpu for a in self.allocs.values() if not a.observed.state.terminal for gpu in a.spec.gpus}

    def snapshot(self) -> list[LocalAlloc]:
        return [replace(a) for a in self.allocs.values()]
