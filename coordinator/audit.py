"""The audit log: every time someone reached into a job (`gpuctl exec`, `gpuctl ssh`), kept in the store. A
row is written when the command or session starts (so a cut connection or a coordinator restart still leaves
it) and completed with how it ended."""

from __future__ import annotations

import json
import time

from coordinator.store import Store
from shared.wire import AuditEntry

MAX_ENTRIES = 1000  # in one answer


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def started(
        self,
        who: str,
        project: str,
        job_id: str,
        node: int,
        host_id: str,
        command: list[str],
        kind: str = "exec",
    ) -> int:
        """Record an exec (or an ssh session) that is starting, committed before it runs; answers its
        entry's id."""
        with self.store.tx() as db:
            cursor = db.execute(
                "INSERT INTO audit (at, who, project, job_id, node, host_id, kind, command)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (time.time(), who, project, job_id, node, host_id, kind, json.dumps(command)),
            )
            return int(cursor.fetchone()[0])

    def ended(self, entry_id: int, exit_code: int | None, error: str) -> None:
        with self.store.tx() as db:
            db.execute(
                "UPDATE audit SET ended_at=?, exit_code=?, error=? WHERE id=?",
                (time.time(), exit_code, error, entry_id),
            )

    def entries(self, job_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The latest entries (of one job, if given), newest first."""
        where, args = ("WHERE job_id=?", [job_id]) if job_id else ("", [])
        rows = self.store.db.execute(
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", (*args, min(limit, MAX_ENTRIES))
        ).fetchall()
        return [
            AuditEntry(
                id=row["id"],
                at=row["at"],
                who=row["who"],
                project=row["project"],
                job_id=row["job_id"],
                node=row["node"],
                host_id=row["host_id"],
                kind=row["kind"],
                command=json.loads(row["command"]),
                ended_at=row["ended_at"],
                exit_code=row["exit_code"],
                error=row["error"],
            )
            for row in rows
        ]
