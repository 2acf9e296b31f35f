"""Changes heard across coordinator replicas through a real PostgreSQL's LISTEN/NOTIFY: a long poll on one
replica wakes on another's change, a follower's kick reaches the leader only, sightings of hosts travel, and
a listening connection that is killed comes back (waking every waiter, which then reads the store)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from coordinator.leader import AlwaysLeader
from coordinator.notify import CHANNEL, PAYLOAD_MAX_BYTES, News, Notifier
from coordinator.waiters import Waiters

WAIT_S = 30.0


class Follower:
    leads = False


@dataclass
class Replica:
    """A coordinator as the relay reaches it: real waiters and liveness, and the kicks it was asked for."""

    leadership: AlwaysLeader | Follower
    host_waiters: Waiters = field(default_factory=Waiters)
    log_waiters: Waiters = field(default_factory=Waiters)
    last_seen: dict[str, float] = field(default_factory=dict)
    kicks: list[tuple[set[str], set[str]]] = field(default_factory=list)

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        self.kicks.append((set(jobs), set(hosts)))


@contextlib.asynccontextmanager
async def _replicas(url: str) -> AsyncIterator[tuple[Replica, Notifier, Replica, Notifier]]:
    """A follower and a leader, each with its notifier running and listening."""
    follower, leader = Replica(Follower()), Replica(AlwaysLeader())
    notifiers = [Notifier(url, follower), Notifier(url, leader)]
    tasks = [asyncio.create_task(n.run()) for n in notifiers]
    try:
        await _until(lambda: _listeners(url) == 2, "both replicas to listen")
        yield follower, notifiers[0], leader, notifiers[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _listeners(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
        ).fetchone()
    return int(row[0]) if row else 0


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_long_poll_on_one_replica_wakes_on_anothers_change(postgres_url: str) -> None:
    async with _replicas(postgres_url) as (follower, _, leader, _):
        host_poll = asyncio.create_task(leader.host_waiters.wait("host-1", WAIT_S))
        log_poll = asyncio.create_task(follower.log_waiters.wait("job-1", WAIT_S))
        other = asyncio.create_task(leader.host_waiters.wait("host-2", WAIT_S))
        await asyncio.sleep(0.1)
        follower.host_waiters.changed("host-1")
        leader.log_waiters.changed("job-1")
        assert await host_poll and await log_poll
        assert not other.done()  # only the key that changed wakes
        other.cancel()


async def test_a_followers_kick_reaches_the_leader_and_only_it(postgres_url: str) -> None:
    async with _replicas(postgres_url) as (follower, follower_relay, leader, leader_relay):
        follower_relay.kick(["job-1"], ["host-1"])
        await _until(lambda: len(leader.kicks) == 1, "the leader to be asked")
        follower_relay.kick(["job-2"], [])
        follower_relay.kick([], [])  # a whole re-sync, which covers job-2 as well
        await _until(lambda: len(leader.kicks) == 2, "the leader to be asked again")
        assert leader.kicks == [({"job-1"}, {"host-1"}), (set(), set())]
        leader_relay.kick(["job-2"], [])  # never sent by a leader; heard, a follower schedules nothing
        follower_relay.seen("host-9")
        await _until(lambda: "host-9" in leader.last_seen, "the leader to hear of host-9")
        assert follower.kicks == []
        assert follower.last_seen == {}  # its own sighting is not news to itself


async def test_a_killed_listening_connection_comes_back_and_wakes_every_waiter(postgres_url: str) -> None:
    async with _replicas(postgres_url) as (follower, _, leader, _):
        poll = asyncio.create_task(leader.host_waiters.wait("host-1", WAIT_S))
        await asyncio.sleep(0.1)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
            )
        assert await poll  # woken when its replica listened again: it may have missed a change
        await _until(lambda: _listeners(postgres_url) == 2, "both replicas to listen again")
        again = asyncio.create_task(leader.host_waiters.wait("host-2", WAIT_S))
        await asyncio.sleep(0.1)
        follower.host_waiters.changed("host-2")
        assert await again


def test_news_is_cut_into_payloads_postgresql_accepts(postgres_url: str) -> None:
    news = News(hosts={f"host-{i:05}" for i in range(2000)}, kick_all=True)
    payloads = list(news.payloads("origin"))
    assert len(payloads) > 1 and all(len(p.encode()) < PAYLOAD_MAX_BYTES for p in payloads)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for payload in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
