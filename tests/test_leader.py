"""The leadership lease on a real PostgreSQL: of two candidates one leads; when the leader's connection is
killed the other takes over, once the lease has passed; a stale leader's fenced write is refused."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import psycopg
from psycopg.rows import dict_row

from coordinator.leader import Fenced, LeaseLeadership
from coordinator.store import Store

LEASE_S = 1.0
WAIT_S = 30.0


def _schema(url: str) -> None:
    """The store's schema, the leadership table in it."""
    Store(url).close()


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _running(*candidates: LeaseLeadership) -> AsyncIterator[list[list[bool]]]:
    """Run the candidates; yields each one's on_change calls."""
    changes: list[list[bool]] = [[] for _ in candidates]
    tasks = [
        asyncio.create_task(c.run(changes[i].append), name=f"leader-{i}") for i, c in enumerate(candidates)
    ]
    try:
        yield changes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in candidates:
            await c.release()


def _row(url: str) -> dict:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT epoch, holder, lease_until, EXTRACT(EPOCH FROM clock_timestamp()) AS now"
            " FROM leadership WHERE id = 1"
        ).fetchone()
    assert row is not None
    return row


async def test_of_two_candidates_exactly_one_leads(postgres_url: str) -> None:
    _schema(postgres_url)
    a, b = LeaseLeadership(postgres_url, "a", LEASE_S), LeaseLeadership(postgres_url, "b", LEASE_S)
    async with _running(a, b) as changes:
        await _until(lambda: a.leads or b.leads, "a leader")
        deadline = time.monotonic() + 3 * LEASE_S  # several renewals: the other never leads meanwhile
        while time.monotonic() < deadline:
            assert not (a.leads and b.leads)
            await asyncio.sleep(0.01)
        leader = a if a.leads else b
        assert changes == ([[True], []] if leader is a else [[], [True]])
        assert _row(postgres_url)["holder"] == ("a" if leader is a else "b")


async def test_the_other_takes_over_once_the_killed_leaders_lease_has_passed(postgres_url: str) -> None:
    _schema(postgres_url)
    a = LeaseLeadership(postgres_url, "a", LEASE_S)
    async with _running(a) as changes_a:
        await _until(lambda: a.leads, "a to lead")
        b = LeaseLeadership(postgres_url, "b", LEASE_S)
        async with _running(b) as changes_b:
            await asyncio.sleep(2 * LEASE_S)
            assert not b.leads  # a renews: b waits
            before = _row(postgres_url)
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (a._conn.info.backend_pid,))
            await _until(lambda: b.leads, "b to take over")
            after = _row(postgres_url)
            assert changes_a[0] == [True, False]  # a stepped down when its renewal failed
            assert not a.leads
            assert changes_b[0] == [True]
            assert (after["epoch"], after["holder"]) == (before["epoch"] + 1, "b")
            # b's lease began (database clock) only once a's last renewed lease had ended
            assert after["lease_until"] - LEASE_S >= before["lease_until"]


async def test_a_stale_leaders_fenced_write_is_refused(postgres_url: str) -> None:
    _schema(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE placements (job TEXT)")
    a = LeaseLeadership(postgres_url, "a", LEASE_S)
    async with _running(a):
        await _until(lambda: a.leads, "a to lead")
        assert _fenced_insert(postgres_url, a, "while leading")
        # another replica takes the lease over (as after a's lease ran out while a was stopped)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("UPDATE leadership SET epoch = epoch + 1, holder = 'b' WHERE id = 1")
        stale_epoch = a.epoch
        assert stale_epoch is not None
        assert not _fenced_insert(postgres_url, a, "after the takeover")
    with psycopg.connect(postgres_url) as conn:
        jobs = [r[0] for r in conn.execute("SELECT job FROM placements").fetchall()]
    assert jobs == ["while leading"]


def _fenced_insert(url: str, leadership: LeaseLeadership, job: str) -> bool:
    """A placement as the scheduler writes it: fenced in its own transaction. True if it committed."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        try:
            with conn.transaction():
                leadership.fence(conn)
                conn.execute("INSERT INTO placements VALUES (%s)", (job,))
        except Fenced:
            return False
    return True
