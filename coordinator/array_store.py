"""Job arrays in the store: one `arrays` row per array, and one ordinary job row per task that names its
array and index, so every task is scheduled, run, stopped and logged as a job is."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from coordinator.arrays import ArrayLoad
from coordinator.db import Row
from coordinator.store import JobRow, Store, _job
from shared.spec import TaskSpec
from shared.states import JobState
from shared.wire import ArrayTask

_ACTIVE = (JobState.ASSIGNED.value, JobState.PULLING.value, JobState.RUNNING.value)
_UNFINISHED = tuple(s.value for s in JobState if not s.terminal)


@dataclass(frozen=True)
class ArrayRow:
    id: str
    name: str
    project: str
    indices: str  # as submitted, without its `%N`: "1-1000"
    task_count: int
    min_index: int
    max_index: int
    task_limit: int  # at most this many tasks placed at once; 0: no limit
    submitted_at: float
    spec: TaskSpec  # every task's


class ArrayStore:
    """Reads and writes of arrays, on the coordinator's one Store (its connection and transactions)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def insert(self, array: ArrayRow, tasks: list[tuple[str, int]], reason: str, user: str = "") -> None:
        """The array and its tasks (job id, index), submitted by `user`, committed together: all of them
        or none. One statement for all the tasks, with the spec encoded once."""
        spec = msgspec.json.encode(array.spec).decode()
        priority, now = array.spec.priority, time.time()
        rows = [
            (
                job_id,
                f"{array.name}[{index}]",
                spec,
                priority,
                reason,
                now,
                array.project,
                array.id,
                index,
                user,
            )
            for job_id, index in tasks
        ]
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO arrays(id, name, project, indices, task_count, min_index, max_index, task_limit,"
                " submitted_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    array.id,
                    array.name,
                    array.project,
                    array.indices,
                    array.task_count,
                    array.min_index,
                    array.max_index,
                    array.task_limit,
                    now,
                ),
            )
            db.executemany(
                "INSERT INTO jobs(id, name, spec, priority, status, reason, submitted_at, project, array_id,"
                " array_index, submitted_by) VALUES (?,?,?,?,'submitted',?,?,?,?,?,?)",
                rows,
            )

    def ids_taken(self, ids: list[str]) -> set[str]:
        """Which of `ids` name a job or an array already."""
        marks = json.dumps(ids)
        rows = self.store.db.execute(
            "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
            " UNION SELECT id FROM arrays WHERE id IN (SELECT value FROM json_each(?))",
            (marks, marks),
        ).fetchall()
        return {r["id"] for r in rows}

    def get(self, array_id: str) -> ArrayRow | None:
        rows = self._select("WHERE a.id=?", (array_id,))
        return rows[0] if rows else None

    def find(self, ref: str, project: str | None) -> list[ArrayRow]:
        """Arrays whose id starts with `ref` or whose name is `ref`, newest first; only `project`'s if given."""
        pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return self._select(
            "WHERE (a.id LIKE ? ESCAPE '\\' OR a.name=?) AND (? IS NULL OR a.project=?)"
            " ORDER BY a.submitted_at DESC LIMIT 20",
            (pattern, ref, project, project),
        )

    def listing(self, include_finished: bool, project: str | None, limit: int = 1000) -> list[ArrayRow]:
        """Newest first; without `include_finished`, only arrays with a task still to finish."""
        where = "WHERE (? IS NULL OR a.project=?)"
        if not include_finished:
            marks = ",".join("?" * len(_UNFINISHED))
            where += f" AND EXISTS (SELECT 1 FROM jobs j WHERE j.array_id=a.id AND j.status IN ({marks}))"
        args = (project, project, *([] if include_finished else _UNFINISHED), limit)
        return self._select(where + " ORDER BY a.submitted_at DESC LIMIT ?", args)

    def counts(self, array_id: str) -> dict[str, int]:
        """Its tasks by status."""
        rows = self.store.db.execute(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE array_id=? GROUP BY status", (array_id,)
        ).fetchall()
        return {r["status"]: r["n"] for r in rows}

    def first_reason(self, array_id: str) -> str:
        """Why its first waiting task waits ("" when none waits)."""
        row = self.store.db.execute(
            "SELECT reason FROM jobs WHERE array_id=? AND status IN ('submitted','pending','retrying')"
            " ORDER BY seq LIMIT 1",
            (array_id,),
        ).fetchone()
        return row["reason"] if row else ""

    def tasks(self, array_id: str, include_finished: bool) -> list[JobRow]:
        """Its tasks by index; without `include_finished`, those still to finish."""
        where = "" if include_finished else f" AND status IN ({','.join('?' * len(_UNFINISHED))})"
        rows = self.store.db.execute(
            f"SELECT * FROM jobs WHERE array_id=?{where} ORDER BY array_index",
            (array_id, *(() if include_finished else _UNFINISHED)),
        ).fetchall()
        return [_job(r) for r in rows]

    def queued_tasks(self, array_id: str, page: int = 100) -> Iterator[JobRow]:
        """Its tasks still waiting to be placed, in queue order, read `page` at a time as they are taken."""
        after = (float("inf"), -1)  # (priority, seq) of the last task given: the next page starts past it
        while True:
            rows = self.store.db.execute(
                "SELECT * FROM jobs WHERE array_id=? AND status IN ('submitted','pending','retrying')"
                " AND (priority < ? OR (priority = ? AND seq > ?)) ORDER BY priority DESC, seq LIMIT ?",
                (array_id, after[0], after[0], after[1], page),
            ).fetchall()
            for row in rows:
                yield _job(row)
            if len(rows) < page:
                return
            after = (rows[-1]["priority"], rows[-1]["seq"])

    def hold_rest(self, array_id: str, let_in: set[str], reason: str) -> None:
        """Mark every waiting task of the array but `let_in` pending with `reason`, where it is not so yet
        (a retrying task keeps its state until its back-off is over)."""
        with self.store.tx() as db:
            db.execute(
                "UPDATE jobs SET status='pending', reason=? WHERE array_id=? AND status IN ('submitted','pending')"
                " AND NOT (status='pending' AND reason=?) AND id NOT IN (SELECT value FROM json_each(?))",
                (reason, array_id, reason, json.dumps(sorted(let_in))),
            )

    def task(self, array_id: str, index: int) -> JobRow | None:
        row = self.store.db.execute(
            "SELECT * FROM jobs WHERE array_id=? AND array_index=?", (array_id, index)
        ).fetchone()
        return _job(row) if row else None

    def task_facts(self, job: JobRow) -> ArrayTask | None:
        """What an allocation of the job tells its agent of its array (the task's environment)."""
        if job.array_id is None or job.array_index is None:
            return None
        row = self.store.db.execute(
            "SELECT task_count, min_index, max_index FROM arrays WHERE id=?", (job.array_id,)
        ).fetchone()
        return ArrayTask(
            array_id=job.array_id,
            index=job.array_index,
            count=row["task_count"],
            min_index=row["min_index"],
            max_index=row["max_index"],
        )

    def loads(self, array_ids: set[str]) -> dict[str, ArrayLoad]:
        """For the arrays among `array_ids` that have a limit: the limit and their tasks placed now."""
        marks = ",".join("?" * len(_ACTIVE))
        rows = self.store.db.execute(
            "SELECT a.id, a.task_limit, (SELECT COUNT(*) FROM jobs j WHERE j.array_id=a.id"
            f" AND j.status IN ({marks})) AS active FROM arrays a"
            " WHERE a.id IN (SELECT value FROM json_each(?)) AND a.task_limit > 0",
            (*_ACTIVE, json.dumps(sorted(array_ids))),
        ).fetchall()
        return {r["id"]: ArrayLoad(r["task_limit"], r["active"]) for r in rows}

    def _select(self, where: str, args: tuple[object, ...]) -> list[ArrayRow]:
        rows = self.store.db.execute(
            "SELECT a.*, (SELECT spec FROM jobs WHERE array_id=a.id LIMIT 1) AS spec FROM arrays a " + where,
            args,
        ).fetchall()
        return [_array(r) for r in rows]


def _array(row: Row) -> ArrayRow:
    return ArrayRow(
        id=row["id"],
        name=row["name"],
        project=row["project"],
        indices=row["indices"],
        task_count=row["task_count"],
        min_index=row["min_index"],
        max_index=row["max_index"],
        task_limit=row["task_limit"],
        submitted_at=row["submitted_at"],
        spec=msgspec.json.decode(row["spec"], type=TaskSpec),
    )
