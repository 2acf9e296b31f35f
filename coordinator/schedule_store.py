"""Scheduled tasks in the store: one `schedules` row per schedule; each run is an ordinary job row that
names its schedule, so it is scheduled, run, stopped and logged as any job is."""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from coordinator.db import Connection, Row
from coordinator.store import JobRow, Store, _job
from shared.spec import TaskSpec


@dataclass(frozen=True)
class ScheduleRow:
    id: str
    name: str
    project: str
    spec: TaskSpec  # with its `schedule`; each run's spec is the same without it
    fired_for: float  # the latest cron time handled (run or skipped); at first, when it was submitted
    next_at: float  # the next cron time after `fired_for`
    note: str  # what happened at `fired_for` ("" before the first time)
    stopped: bool
    submitted_at: float
    user: str = ""  # who submitted it: its runs count as theirs (`gpuctl usage`)


class ScheduleStore:
    """Reads and writes of schedules, on the coordinator's one Store (its connection and transactions)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def insert(self, schedule: ScheduleRow) -> None:
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO schedules(id, name, project, spec, fired_for, next_at, note, stopped,"
                " submitted_at, submitted_by) VALUES (?,?,?,?,?,?,?,0,?,?)",
                (
                    schedule.id,
                    schedule.name,
                    schedule.project,
                    msgspec.json.encode(schedule.spec).decode(),
                    schedule.fired_for,
                    schedule.next_at,
                    schedule.note,
                    schedule.submitted_at,
                    schedule.user,
                ),
            )

    def run(self, schedule: ScheduleRow, fired_for: float, next_at: float, job_id: str, name: str) -> bool:
        """Submit the run of `fired_for` as a job and mark that time handled, in one transaction: a
        coordinator that stops between the two did neither, so no time runs twice or is lost. False, and
        nothing written, if `schedule` is stale: another pass handled its time, or it was stopped."""
        spec = msgspec.structs.replace(schedule.spec, schedule=None)
        with self.store.tx() as db:
            if not self._handled(db, schedule, fired_for, next_at, f"ran {name}"):
                return False
            db.execute(
                "INSERT INTO jobs(id, name, spec, priority, status, reason, submitted_at, project, schedule_id,"
                " submitted_by) VALUES (?,?,?,?,'submitted','waiting for the scheduler',?,?,?,?)",
                (
                    job_id,
                    name,
                    msgspec.json.encode(spec).decode(),
                    spec.priority,
                    time.time(),
                    schedule.project,
                    schedule.id,
                    schedule.user,
                ),
            )
        return True

    def skip(self, schedule: ScheduleRow, fired_for: float, next_at: float, note: str) -> None:
        """Mark `fired_for` handled without a run (the previous run has not ended)."""
        with self.store.tx() as db:
            self._handled(db, schedule, fired_for, next_at, note)

    @staticmethod
    def _handled(db: Connection, schedule: ScheduleRow, fired_for: float, next_at: float, note: str) -> bool:
        """Move the schedule on from the time it was read at to `fired_for`; False if it was not there
        any more (compare and set: the store decides, whoever else writes it)."""
        moved = db.execute(
            "UPDATE schedules SET fired_for=?, next_at=?, note=? WHERE id=? AND fired_for=? AND stopped=0",
            (fired_for, next_at, note, schedule.id, schedule.fired_for),
        )
        return moved.rowcount == 1

    def stop(self, schedule_id: str) -> None:
        """No more runs. Idempotent."""
        with self.store.tx() as db:
            db.execute("UPDATE schedules SET stopped=1 WHERE id=?", (schedule_id,))

    def due(self, now: float) -> list[ScheduleRow]:
        """The schedules not stopped whose next time has come."""
        return self._select("WHERE stopped=0 AND next_at<=? ORDER BY next_at", (now,))

    def active(self) -> list[ScheduleRow]:
        return self._select("WHERE stopped=0", ())

    def get(self, schedule_id: str) -> ScheduleRow | None:
        rows = self._select("WHERE id=?", (schedule_id,))
        return rows[0] if rows else None

    def find(self, ref: str, project: str | None) -> list[ScheduleRow]:
        """Schedules whose id starts with `ref` or whose name is `ref`, newest first; only `project`'s if
        given."""
        pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return self._select(
            "WHERE (id LIKE ? ESCAPE '\\' OR name=?) AND (? IS NULL OR project=?)"
            " ORDER BY submitted_at DESC LIMIT 20",
            (pattern, ref, project, project),
        )

    def listing(self, include_stopped: bool, project: str | None, limit: int = 1000) -> list[ScheduleRow]:
        """Newest first; without `include_stopped`, only those that still run."""
        where = "WHERE (? IS NULL OR project=?)" + ("" if include_stopped else " AND stopped=0")
        return self._select(where + " ORDER BY submitted_at DESC LIMIT ?", (project, project, limit))

    def runs(self, schedule_id: str, limit: int = 1000) -> list[JobRow]:
        """Its runs, newest first."""
        rows = self.store.db.execute(
            "SELECT * FROM jobs WHERE schedule_id=? ORDER BY seq DESC LIMIT ?", (schedule_id, limit)
        ).fetchall()
        return [_job(r) for r in rows]

    def run_count(self, schedule_id: str) -> int:
        row = self.store.db.execute(
            "SELECT COUNT(*) AS n FROM jobs WHERE schedule_id=?", (schedule_id,)
        ).fetchone()
        return int(row["n"])

    def _select(self, where: str, args: tuple[object, ...]) -> list[ScheduleRow]:
        rows = self.store.db.execute("SELECT * FROM schedules " + where, args).fetchall()
        return [_schedule(r) for r in rows]


def _schedule(row: Row) -> ScheduleRow:
    return ScheduleRow(
        id=row["id"],
        name=row["name"],
        project=row["project"],
        spec=msgspec.json.decode(row["spec"], type=TaskSpec),
        fired_for=row["fired_for"],
        next_at=row["next_at"],
        note=row["note"],
        stopped=bool(row["stopped"]),
        submitted_at=row["submitted_at"],
        user=row["submitted_by"],
    )
