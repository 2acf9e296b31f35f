"""Scheduled tasks as users see them: a spec with `schedule: {cron: ...}` becomes a schedule, not a job;
the housekeeping beat submits it as an ordinary job at each of its times (UTC).

The rules, chosen as Nomad's periodic jobs with `prohibit_overlap` behave:
- A time runs at most once: the run's job and the time it was for are committed in one transaction.
- A coordinator that was down over one or more times runs once, for the latest of them, at its first beat.
- A time whose previous run has not ended (pending or running) is skipped, and the schedule says so.
- `gpuctl stop` stops the schedule and its run that has not ended; each run can also be stopped alone.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from coordinator.array_store import ArrayRow
from coordinator.host_ops import Ambiguous, NotFound
from coordinator.schedule_store import ScheduleRow, ScheduleStore
from coordinator.store import JobRow, Store
from shared.spec import TaskSpec, redacted
from shared.wire import JobView, ScheduleSummary

log = logging.getLogger("gpuctl.coordinator")
Target = JobRow | ArrayRow | ScheduleRow


class ScheduleOps:
    """Part of the Coordinator: what it holds is declared here, set in its __init__. It comes before
    ArrayOps among the Coordinator's parts: a ref, a view and a listing look at schedules first."""

    store: Store
    schedules: ScheduleStore

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        raise NotImplementedError

    def accepted_spec(self, spec: TaskSpec, project: str) -> TaskSpec:
        raise NotImplementedError

    def stop_jobs(self, jobs: list[JobRow]) -> None:
        raise NotImplementedError

    def submit_schedule(
        self, spec: TaskSpec, project: str = "default", now: float | None = None, user: str = ""
    ) -> ScheduleRow:
        """Accept a schedule of `project` submitted by `user` (committed before the answer); its first time
        is the first after `now`. SpecError naming the field if the spec may not run here."""
        spec = self.accepted_spec(spec, project)
        assert spec.schedule is not None
        now = _now(now)
        schedule_id = self._free_id()
        row = ScheduleRow(
            id=schedule_id,
            name=spec.name or f"schedule-{schedule_id[:4]}",
            project=project,
            spec=spec,
            fired_for=now,
            next_at=_next_at(spec, now),
            note="",
            stopped=False,
            submitted_at=now,
            user=user,
        )
        self.schedules.insert(row)
        log.info("schedule %s submitted (%s, cron %s)", row.id, row.name, "; ".join(spec.schedule.cron))
        return row

    def _free_id(self) -> str:
        while True:
            candidate = secrets.token_hex(4)
            if self.schedules.get(candidate) is None and self.store.get_job(candidate) is None:
                return candidate

    def fire_schedules(self, now: float | None = None) -> list[str]:
        """Submit a run of every schedule whose time has come by `now` (default: the clock), skipping one
        whose previous run has not ended. Safe to call at any time, any number of times: a time that was
        handled is never handled again, restarts included. Answers the ids of the jobs submitted."""
        now = _now(now)
        submitted = []
        for schedule in self.schedules.due(now):
            job_id = self._fire(schedule, now)
            if job_id is not None:
                submitted.append(job_id)
        if submitted:
            self.kick(jobs=submitted)  # committed: a failed pass is the next beat's to retry
        return submitted

    def _fire(self, schedule: ScheduleRow, now: float) -> str | None:
        from shared.cron import latest_due

        assert schedule.spec.schedule is not None
        due = latest_due(schedule.spec.schedule.cron, _utc(schedule.fired_for), _utc(now))
        assert due is not None  # `next_at`, a time after `fired_for`, has come
        fired_for = due.timestamp()
        next_at = _next_at(schedule.spec, fired_for)
        at = due.strftime("%Y-%m-%dT%H:%M")
        running = [run for run in self.schedules.runs(schedule.id, limit=1) if not run.status.terminal]
        if running:
            note = f"skipped {at}: its run {running[0].id} ({running[0].name}) has not ended"
            self.schedules.skip(schedule, fired_for, next_at, note)
            log.info("schedule %s %s", schedule.id, note)
            return None
        job_id, name = self._free_id(), f"{schedule.name}@{at}"
        if not self.schedules.run(schedule, fired_for, next_at, job_id, name):
            return None  # stale: its time was handled, or it was stopped, since it was read
        log.info("schedule %s submitted job %s (%s)", schedule.id, job_id, name)
        return job_id

    def stop_schedule(self, schedule: ScheduleRow) -> None:
        """No more runs, and its run that has not ended is asked to stop (runs never overlap: only the
        latest may not have ended). Idempotent."""
        self.schedules.stop(schedule.id)
        self.stop_jobs([run for run in self.schedules.runs(schedule.id, limit=1) if not run.status.terminal])
        log.info("schedule %s stopped", schedule.id)

    def schedule_view(self, schedule: ScheduleRow) -> JobView:
        assert schedule.spec.schedule is not None
        fresh = self.schedules.get(schedule.id) or schedule
        return JobView(
            id=fresh.id,
            name=fresh.name,
            status="stopped" if fresh.stopped else "scheduled",
            reason="",
            priority=fresh.spec.priority,
            submitted_at=fresh.submitted_at,
            spec=redacted(fresh.spec),
            schedule=ScheduleSummary(
                cron=schedule.spec.schedule.cron,
                next_run_at=None if fresh.stopped else fresh.next_at,
                last_note=fresh.note,
                runs=self.schedules.run_count(fresh.id),
            ),
        )

    # --- a schedule among jobs and arrays: refs, views, listings --------------------------------------

    if TYPE_CHECKING:  # ArrayOps', after this part in the Coordinator's order: no stub may hide it

        def find_target(self, ref: str, project: str | None = None) -> JobRow | ArrayRow: ...

    def find_any(self, ref: str, project: str | None = None) -> Target:
        """A schedule by exact id or name (the newest of that name), else a job or an array as
        `find_target` finds them, else a schedule by a unique id prefix. Only among `project`'s if given."""
        found = self.schedules.find(ref, project)
        exact = [s for s in found if ref in (s.id, s.name)]
        if exact:
            return exact[0]
        try:
            return self.find_target(ref, project)
        except NotFound:
            if not found:
                raise
        if len(found) > 1:
            raise Ambiguous(f"{ref!r} matches {len(found)} schedules: " + ", ".join(s.id for s in found[:5]))
        return found[0]

    def one_job(self, target: Target) -> JobRow:
        """A schedule stands for its latest run (`gpuctl logs nightly`); one that has not run is refused
        with its next time."""
        if isinstance(target, ScheduleRow):
            runs = self.schedules.runs(target.id, limit=1)
            if not runs:
                raise NotFound(
                    f"schedule {target.id} ({target.name}) has not run yet; next run {_utc_text(target.next_at)}"
                )
            return runs[0]
        job: JobRow = super().one_job(target)  # type: ignore[misc]
        return job

    def view(self, target: Target) -> JobView:
        if isinstance(target, ScheduleRow):
            return self.schedule_view(target)
        view: JobView = super().view(target)  # type: ignore[misc]
        return view

    def job_views(self, include_finished: bool, project: str | None) -> list[JobView]:
        """Jobs, arrays and schedules, newest first."""
        views: list[JobView] = super().job_views(include_finished, project)  # type: ignore[misc]
        views += [self.schedule_view(s) for s in self.schedules.listing(include_finished, project)]
        views.sort(key=lambda v: v.submitted_at, reverse=True)
        return views

    def schedule_archives(self) -> set[str]:
        """The files archives that schedules still to run will hand to their runs."""
        from coordinator.submit_rules import archive_ids

        return {archive_id for s in self.schedules.active() for archive_id in archive_ids(s.spec)}


def _now(now: float | None) -> float:
    return datetime.now(UTC).timestamp() if now is None else now


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _utc_text(ts: float) -> str:
    return _utc(ts).strftime("%Y-%m-%d %H:%M UTC")


def _next_at(spec: TaskSpec, after: float) -> float:
    from shared.cron import next_time

    assert spec.schedule is not None
    return next_time(spec.schedule.cron, _utc(after)).timestamp()
