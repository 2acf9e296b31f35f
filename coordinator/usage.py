"""Each project's recent GPU-hours, read from the allocations in the store, for fair share (the policy is in
queue_policy.py). `gpuctl usage` reads the same spans (`allocation_spans`: each attempt's GPUs from its start
to its end), undecayed (coordinator/usage_report.py). `coordinator.yaml` sets how fast usage is forgotten:

fair_share_half_life: 7d        # an hour of GPUs weighs half as much this long after it ran
backfill_depth: 16              # waiting jobs given a backfill reservation (coordinator/backfill.py); 0: none

Read at the housekeeping beat, at a cost that follows what changed, not the history: the allocations that
ended since the last look are added to decayed totals kept in memory (their end times are read again a
minute back, as a write may land late; the ids already counted are skipped), and the running ones are
counted fresh. At start, the allocations that ended within ten half-lives are read once (older ones weigh
less than a thousandth).
"""

from __future__ import annotations

import dataclasses
import time

from coordinator.db import Connection, Row
from coordinator.queue_policy import Usage, fair_share_factors
from coordinator.settings import Settings
from coordinator.store import Store
from shared.units import positive_duration_s

QUEUE_SETTINGS = ("fair_share_half_life", "backfill_depth")
MAX_BACKFILL_DEPTH = 1000
LATE_WRITE_S = 60.0  # an allocation's end may be stored this long after the time it records
HORIZON_HALF_LIVES = 10
_SPANS = (
    "SELECT a.id, a.job_id, a.attempt, j.project, json_array_length(a.gpus) AS gpus, a.started_at,"
    " a.finished_at FROM allocations a JOIN jobs j ON j.id = a.job_id"
)


def allocation_spans(db: Connection, where: str, args: tuple[object, ...] = ()) -> list[Row]:
    """The allocations `where` selects (its columns prefixed `a.` and `j.`, of the allocation and its job), each
    as what its use is counted from: id, job_id, attempt, project, gpus (a count), started_at (None: never
    ran) and finished_at (None: still running)."""
    return db.execute(f"{_SPANS} WHERE {where}", args).fetchall()


def queue_settings(raw: dict, base: Settings) -> Settings:
    """`base` with the queue settings `raw` sets. Raises ValueError with one line naming the setting."""
    if "backfill_depth" in raw:
        depth = raw["backfill_depth"]
        if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_BACKFILL_DEPTH:
            raise ValueError(
                f"backfill_depth: expected a whole number from 0 to {MAX_BACKFILL_DEPTH}, got {depth!r}"
            )
        base = dataclasses.replace(base, backfill_depth=depth)
    if "fair_share_half_life" not in raw:
        return base
    try:
        half_life_s = positive_duration_s(raw["fair_share_half_life"])
    except ValueError as exc:
        raise ValueError(f"fair_share_half_life: {exc}") from None
    return dataclasses.replace(base, fair_share_half_life_s=half_life_s)


class ProjectUsage:
    def __init__(self, store: Store, half_life_s: float) -> None:
        self.store = store
        now = time.time()
        self.usage = Usage(half_life_s, now)
        self._looked_at = now - HORIZON_HALF_LIVES * half_life_s
        self._counted: dict[str, float] = {}  # allocation id -> its end, for ends within LATE_WRITE_S

    def factors(self, now: float | None = None) -> dict[str, float]:
        """Each project's fair-share factor as of now; a project absent has 1.0 (it used nothing lately)."""
        now = time.time() if now is None else now
        self.usage.advance(now)
        self._add_ended(now)
        running = allocation_spans(self.store.db, "a.finished_at IS NULL AND a.started_at IS NOT NULL")
        return fair_share_factors(
            self.usage.with_running((r["project"], r["gpus"], r["started_at"]) for r in running)
        )

    def _add_ended(self, now: float) -> None:
        since = self._looked_at - LATE_WRITE_S
        rows = allocation_spans(self.store.db, "a.finished_at > ? AND a.started_at IS NOT NULL", (since,))
        for r in rows:
            if r["id"] not in self._counted:
                self.usage.add_ended(r["project"], r["gpus"], r["started_at"], r["finished_at"])
                self._counted[r["id"]] = r["finished_at"]
        self._looked_at = now
        self._counted = {a: end for a, end in self._counted.items() if end > now - LATE_WRITE_S}
