"""Per-project upload quota: the bytes of stored files archives a project has uploaded.

An archive counts against every project that uploaded it, until the coordinator deletes it (no live job
names it, an hour after its last upload). Re-uploading an archive the project already holds costs nothing.
"""

from __future__ import annotations

import time

from coordinator.disk import format_bytes
from coordinator.store import Store


class QuotaExceeded(Exception):
    """An upload that would take its project over the quota; one line, safe to show."""


class UploadQuota:
    def __init__(self, store: Store, quota_bytes: int) -> None:
        self.store = store
        self.quota_bytes = quota_bytes  # 0: no quota

    def used(self, project: str, besides: str = "") -> int:
        """Bytes of archives `project` has stored, leaving out the archive `besides`."""
        row = self.store.db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM uploads WHERE project = ? AND archive_id != ?",
            (project, besides),
        ).fetchone()
        return int(row[0])

    def admit(self, project: str, archive_id: str, size: int) -> None:
        """Raise QuotaExceeded if storing this archive takes `project` over the quota."""
        if self.quota_bytes <= 0:
            return
        used = self.used(project, besides=archive_id)
        if used + size > self.quota_bytes:
            raise QuotaExceeded(
                f"files: project {project!r} would store {format_bytes(used + size)} of archives, over its "
                f"upload quota of {format_bytes(self.quota_bytes)} (archives no job needs are deleted "
                "an hour after their last upload)"
            )

    def record(self, project: str, archive_id: str, size: int) -> None:
        """Note that `project` holds this archive. Idempotent (an upload again renews the time)."""
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO uploads(project, archive_id, size, uploaded_at) VALUES (?,?,?,?)"
                " ON CONFLICT (project, archive_id) DO UPDATE SET size=excluded.size, uploaded_at=excluded.uploaded_at",
                (project, archive_id, size, time.time()),
            )

    def forget(self, archive_ids: list[str]) -> None:
        """The archives were deleted: they count against no project any more."""
        with self.store.tx() as db:
            db.executemany("DELETE FROM uploads WHERE archive_id = ?", [(a,) for a in archive_ids])
