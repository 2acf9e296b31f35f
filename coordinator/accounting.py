"""Job accounting's device readings: each sync's readings folded into the running allocations whose GPUs they
are of, as a peak of memory used and a time-weighted sum of utilization (`gpuctl usage` reads them back,
coordinator/usage_report.py).

Each reading of an allocation's GPU weighs the seconds since the allocation's reading before it (since its
start for the first), at most `MAX_READING_WEIGHT_S`: a gap longer than that (a partition, a coordinator
restart) is not filled by one reading, and a reading sent twice adds no time. The mean is then
Σ(utilization × seconds) / Σ seconds over all the allocation's GPUs.

The sums are kept in memory and added to the store in batches: at the housekeeping beat every
`Settings.readings_save_s` (one transaction for the whole fleet, in a thread), and for an allocation whose
end a sync reports, before that sync's statuses are recorded (its last readings are durable before its end
is). A coordinator that stops without saving (a crash, SIGKILL) loses at most the readings since its last
save; a clean stop saves them.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import msgspec

from coordinator import work_slot
from coordinator.group_commit import GroupCommit
from coordinator.store import HostRow, Store
from shared.states import AllocState
from shared.wire import GpuMetrics, Inventory, SyncRequest

MAX_READING_WEIGHT_S = 60.0  # six of the agents' default reading intervals
READINGS_SAVE_S = 60.0  # what a crash may lose

# Adds a batch of sums to what the store has: the batches of one allocation may arrive in any order. The stored
# row's columns are named with their table (PostgreSQL finds a bare name ambiguous beside `excluded`).
_ADD = (
    "INSERT INTO allocation_readings(allocation_id, peak_memory_mib, utilization_pct_s, utilization_s)"
    " VALUES (?,?,?,?) ON CONFLICT(allocation_id) DO UPDATE SET peak_memory_mib=CASE"
    " WHEN allocation_readings.peak_memory_mib IS NULL"
    " OR excluded.peak_memory_mib > allocation_readings.peak_memory_mib"
    " THEN excluded.peak_memory_mib ELSE allocation_readings.peak_memory_mib END,"
    " utilization_pct_s=allocation_readings.utilization_pct_s + excluded.utilization_pct_s,"
    " utilization_s=allocation_readings.utilization_s + excluded.utilization_s"
)


@dataclass
class Tally:
    """One allocation's readings since they were last stored."""

    peak_memory_mib: int | None = None
    utilization_pct_s: float = 0.0
    utilization_s: float = 0.0

    def merge(self, other: Tally) -> None:
        if other.peak_memory_mib is not None:
            self.peak_memory_mib = max(self.peak_memory_mib or 0, other.peak_memory_mib)
        self.utilization_pct_s += other.utilization_pct_s
        self.utilization_s += other.utilization_s

    def add(self, reading: GpuMetrics, weight_s: float) -> None:
        self.merge(Tally(reading.memory_used_mib))
        if reading.utilization_pct is not None:
            self.utilization_pct_s += reading.utilization_pct * weight_s
            self.utilization_s += weight_s


def reading_weight_s(taken_at: float, previous_at: float | None, started_at: float | None) -> float:
    """How many seconds a reading taken at `taken_at` stands for: since the allocation's reading before it
    (`previous_at`), else since its start, at most MAX_READING_WEIGHT_S; 0 for one not newer than the last."""
    since = previous_at if previous_at is not None else started_at
    if since is None:
        return MAX_READING_WEIGHT_S
    return min(max(taken_at - since, 0.0), MAX_READING_WEIGHT_S)


class Accounting:
    """The readings not stored yet, by allocation id. Used from the event loop; the writes run in threads."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: dict[str, Tally] = {}
        self._read_at: dict[str, float] = {}  # allocation id -> when its latest folded reading was taken
        self._ends = GroupCommit(self._write)  # the allocations that ended at about the same time: one fsync

    async def fold(self, host: HostRow, req: SyncRequest) -> None:
        """Fold the sync's readings into the host's running allocations, then store those of the allocations
        the sync says ended. Readings of a device the host's inventory lacks, or of a GPU no running
        allocation holds, are ignored. Safe to retry: the same readings again add only the seconds between."""
        if req.readings:
            inventory = req.inventory or host.inventory  # one sent now was checked already (agent_side.py)
            self._fold_readings(host, inventory, req.readings, time.time() - req.readings_age_s)
        ended = [s.id for s in req.allocations if s.id in self.pending and _ends(s.state)]
        if not ended:
            return
        work_slot.release_current()  # waiting for the disk, with the rest of the fleet, is not work
        batch = [(alloc_id, self.pending.pop(alloc_id)) for alloc_id in ended]
        try:
            await self._ends.put(batch)
        except BaseException:
            self._keep(batch)
            raise

    def _fold_readings(
        self, host: HostRow, inventory: Inventory | None, readings: list[GpuMetrics], taken_at: float
    ) -> None:
        known = {gpu.index for gpu in inventory.gpus} if inventory is not None else set()
        holder = self._running_gpus(host.id)
        held: dict[str, list[GpuMetrics]] = defaultdict(list)
        for reading in readings:
            if reading.index in known and reading.index in holder:
                held[holder[reading.index][0]].append(reading)
        started = dict(holder.values())
        for alloc_id, its in held.items():
            weight_s = reading_weight_s(taken_at, self._read_at.get(alloc_id), started[alloc_id])
            self._read_at[alloc_id] = max(taken_at, self._read_at.get(alloc_id, taken_at))
            tally = self.pending.setdefault(alloc_id, Tally())
            for reading in its:
                tally.add(reading, weight_s)

    def _running_gpus(self, host_id: str) -> dict[int, tuple[str, float | None]]:
        """GPU index -> (allocation id, started at) of the host's running allocations. Their three columns
        alone: decoding whole rows (blocks, CPUs too) made a fold of 8 readings 105 us, against 42 us so
        (python -m bench.accounting)."""
        rows = self.store.db.execute(
            "SELECT id, gpus, started_at FROM allocations WHERE host_id=? AND state=?",
            (host_id, AllocState.RUNNING.value),
        ).fetchall()
        return {
            gpu: (row["id"], row["started_at"])
            for row in rows
            for gpu in msgspec.json.decode(row["gpus"], type=list[int])
        }

    async def save(self) -> None:
        """Add every pending sum to the store, in a thread: the loop goes on serving meanwhile."""
        now = time.time()
        self._read_at = {a: at for a, at in self._read_at.items() if at > now - MAX_READING_WEIGHT_S}
        batch, self.pending = self.pending, {}
        if not batch:
            return
        try:
            await asyncio.to_thread(self._write, [list(batch.items())])
        except BaseException:
            self._keep(list(batch.items()))
            raise

    def _keep(self, batch: list[tuple[str, Tally]]) -> None:
        """Sums whose write failed, back among the pending: the next save tries them again."""
        for alloc_id, tally in batch:
            self.pending.setdefault(alloc_id, Tally()).merge(tally)

    def _write(self, batches: list[list[tuple[str, Tally]]]) -> None:
        rows: list[tuple[object, ...]] = [
            (alloc_id, t.peak_memory_mib, t.utilization_pct_s, t.utilization_s)
            for batch in batches
            for alloc_id, t in batch
        ]
        self.store.write_in_background(_ADD, rows)


def _ends(state: str) -> bool:
    try:
        return AllocState(state).terminal
    except ValueError:
        return False
