"""Which coordinator runs the scheduler and housekeeping: on SQLite the only one, on PostgreSQL the one that
holds the leadership lease. All replicas serve the user and agent APIs; only the leader places work, loses
hosts' allocations and fires schedules.

What we chose, and why:
- **A lease in a row, not an advisory lock.** The `leadership` table's one row holds an epoch, the holder's
  name and `lease_until`, in the database's clock (`clock_timestamp()`), so the replicas' clocks do not
  matter. A replica becomes leader by one compare-and-set: `UPDATE ... SET epoch = epoch + 1 WHERE
  lease_until <= now`: of several candidates exactly one succeeds, and only once the old lease has ended. A
  session advisory lock would end when its session ends, but a leader that hangs with its connection open
  (stopped, swapping, its event loop blocked) would hold it forever and nobody would take over; a lease
  ends by itself.
- **Renewed every third of the lease** (`leader_lease`, 10 s by default) on a connection of its own. The
  leader counts its lease from when it *sent* the renewal, so its own deadline comes before the database's:
  past it, `leads` is False and it places nothing, renewed or not. The connection is the leader's session,
  as a session lock's would be: a renewal that fails (the connection dropped, the lease ran out, another
  epoch stands) steps it down at once, and it then waits one lease before standing again, so that a healthy
  replica is the likelier to take over than the one in trouble.
- **Fencing in the placement's own transaction** (`fence`): the scheduler's write reads the row `FOR SHARE`
  and refuses (raises `Fenced`, the transaction rolls back) unless the epoch is still its own and the lease
  still runs. The share lock makes a candidate's epoch bump wait for that transaction, so every placement
  of an old epoch commits before the new leader starts, which then reads the store afresh: a write from a
  stale leader fails rather than lands.
- A follower reads when the lease ends and stands again right then (at most every third of a lease), so
  after a leader dies another takes over within one lease of its last renewal. A leader that stops
  cleanly gives its lease up (`release`), and one that is killed (`kill -9`) is taken over when its lease
  runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from coordinator.db import Connection

log = logging.getLogger("gpuctl.coordinator")

CONNECT_TIMEOUT_S = 5
RENEWALS_PER_LEASE = 3  # a leader renews three times per lease; a follower looks as often
STAND_SLACK_S = 0.05  # a follower stands this long after the lease it read ends
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"  # the database's clock, in seconds: one clock for all replicas


class Fenced(Exception):
    """A placement by a coordinator that no longer leads: its transaction is rolled back."""


class Leadership(Protocol):
    """Whether this coordinator leads now, and the check its placements make in their transaction."""

    @property
    def leads(self) -> bool: ...

    def fence(self, db: Connection) -> None: ...

    async def run(self, on_change: Callable[[bool], None]) -> None: ...

    async def release(self) -> None: ...


class AlwaysLeader:
    """SQLite: one coordinator on its own file, always the leader; nothing to fence."""

    leads = True

    def fence(self, db: Connection) -> None:
        pass

    async def run(self, on_change: Callable[[bool], None]) -> None:
        on_change(True)
        await asyncio.Event().wait()

    async def release(self) -> None:
        pass


class LeaseLeadership:
    """The leadership lease on PostgreSQL (the module docstring says how it works and why).

    `run` campaigns and renews until cancelled, telling `on_change(True)` when this replica becomes leader
    and `on_change(False)` when it stops; `leads` also turns False by itself when the lease's own deadline
    passes without a renewal. Not thread-safe: the coordinator's event loop alone calls it."""

    def __init__(self, database_url: str, holder: str, lease_s: float) -> None:
        self.database_url = database_url
        self.holder = holder  # shown in the row: which replica leads
        self.lease_s = lease_s
        self.epoch: int | None = None  # while leading
        self._valid_until = 0.0  # monotonic: this replica places nothing past it
        self._stand_after = 0.0  # monotonic: a deposed leader waits this long before standing again
        self._lease_ends_in_s = 0.0  # as a follower last read it
        self._conn: Any = None  # psycopg.AsyncConnection, autocommit, this object's own

    @property
    def leads(self) -> bool:
        return self.epoch is not None and time.monotonic() < self._valid_until

    def fence(self, db: Connection) -> None:
        """Raise Fenced unless this replica's epoch still stands and its lease still runs, holding the row
        so that no new leader's epoch can commit before the calling transaction ends."""
        if self.epoch is None:
            raise Fenced("this coordinator does not lead")
        row = db.execute(
            f"SELECT epoch, lease_until > {_NOW} AS live FROM leadership WHERE id = 1 FOR SHARE"
        ).fetchone()
        if row is None or row["epoch"] != self.epoch or not row["live"]:
            raise Fenced(f"the leadership of epoch {self.epoch} ended")

    async def run(self, on_change: Callable[[bool], None]) -> None:
        import psycopg

        while True:
            try:
                await self._step(on_change)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._drop_connection()
                self._step_down(on_change, f"its connection failed: {exc or type(exc).__name__}")
            await asyncio.sleep(self._pause_s())

    async def _step(self, on_change: Callable[[bool], None]) -> None:
        if self.epoch is not None:
            if not await self._renew():
                self._step_down(on_change, "its lease was not renewed in time")
        elif time.monotonic() >= self._stand_after and await self._stand():
            log.info("leading the scheduler as epoch %d (%s)", self.epoch, self.holder)
            on_change(True)

    async def _stand(self) -> bool:
        """Take the lease if it has ended: one compare-and-set, that of all candidates one wins. A loser
        notes when the standing lease ends, to stand again right then."""
        sent = time.monotonic()
        row = await self._fetch(
            "WITH won AS (UPDATE leadership SET epoch = epoch + 1, holder = %s, lease_until = "
            + _NOW
            + " + %s"
            " WHERE id = 1 AND lease_until <= " + _NOW + " RETURNING epoch)"
            " SELECT (SELECT epoch FROM won), (SELECT lease_until - "
            + _NOW
            + " FROM leadership WHERE id = 1)",
            (self.holder, self.lease_s),
        )
        assert row is not None
        epoch, left_s = row
        if epoch is None:
            self._lease_ends_in_s = max(0.0, float(left_s or 0.0))
            return False
        self.epoch, self._valid_until = epoch, sent + self.lease_s
        return True

    async def _renew(self) -> bool:
        """Extend this replica's lease, if its epoch still stands and its lease has not run out."""
        sent = time.monotonic()
        if sent >= self._valid_until:
            return False
        row = await self._fetch(
            "UPDATE leadership SET lease_until = " + _NOW + " + %s"
            " WHERE id = 1 AND epoch = %s AND lease_until > " + _NOW + " RETURNING epoch",
            (self.lease_s, self.epoch),
        )
        if row is None:
            return False
        self._valid_until = sent + self.lease_s
        return True

    def _step_down(self, on_change: Callable[[bool], None], why: str) -> None:
        if self.epoch is None:
            return
        log.warning("no longer leading the scheduler (epoch %d): %s", self.epoch, why)
        self.epoch = None
        self._stand_after = time.monotonic() + self.lease_s
        on_change(False)

    def _pause_s(self) -> float:
        """A third of the lease; a follower wakes when the standing lease ends, if that comes sooner."""
        pause_s = self.lease_s / RENEWALS_PER_LEASE
        if self.epoch is None and time.monotonic() >= self._stand_after:
            return min(pause_s, self._lease_ends_in_s + STAND_SLACK_S)
        return pause_s

    async def release(self) -> None:
        """Give the lease up if this replica holds it (a clean stop), so that another replica takes over
        without waiting for it to run out; then close the connection."""
        epoch, self.epoch = self.epoch, None
        if epoch is not None and self._conn is not None:
            try:
                await self._fetch(
                    "UPDATE leadership SET lease_until = 0 WHERE id = 1 AND epoch = %s", (epoch,)
                )
            except Exception as exc:  # its lease ends by itself: a failed release only delays the next leader
                log.warning("could not give the leadership up: %s", exc)
        await self._drop_connection()

    async def _fetch(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        """One statement on this object's own connection, opened if need be; a statement that takes
        longer than a renewal's interval counts as a failure (TimeoutError)."""
        import psycopg

        async with asyncio.timeout(self.lease_s / RENEWALS_PER_LEASE):
            if self._conn is None:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
            cursor = await self._conn.execute(sql, params)
            return await cursor.fetchone() if cursor.description else None

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
            except Exception:  # a dead connection's close may fail too: it is gone either way
                pass
