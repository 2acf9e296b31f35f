"""What one coordinator replica changes, heard by the others (PostgreSQL's LISTEN/NOTIFY), so that a long
poll on any replica wakes on a change made through another, and the leader schedules what a follower took in.

Three kinds of news travel, batched per turn of the event loop into JSON payloads on one channel:
- wake-ups: the keys of `host_waiters` (a host's desired state changed: its agent's sync answers) and of
  `log_waiters` (a job's log or state changed: `logs -f` answers), each woken on every other replica;
- kicks: a follower does not schedule; the change it committed (a submit, a stop, a sync that freed blocks)
  is handed to the leader as the `kick(jobs=..., hosts=...)` it would have made;
- sightings: liveness lives in memory, and an agent syncs with one replica; the others hear which hosts it
  saw (once a second), so the leader judges leases on every replica's syncs, and `hosts` reads alike.

A notification goes out after the change committed (NOTIFY on a connection of its own, which PostgreSQL
delivers in commit order). One that is lost (a replica's listening connection dropped, a replica killed
between its commit and its NOTIFY) only delays: every wait has its own timeout (a sync's poll, `logs -f`'s
wait), after which its client asks again and reads the store; the leader's housekeeping beat re-syncs the
whole queue from the store; and a replica whose listening connection came back wakes all its waiters at
once, since it may have missed anything. On SQLite there is one coordinator: `InProcess` relays nothing
and the waiters wake in process, as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.leader import Leadership
from coordinator.waiters import Waiters

log = logging.getLogger("gpuctl.coordinator")

CHANNEL = "gpuctl_changes"
PAYLOAD_MAX_BYTES = 7000  # PostgreSQL refuses a payload of 8000 bytes or more
SIGHTINGS_EVERY_S = 1.0  # a follower's sightings reach the leader this late at most (a lease is 30 s+)
RECONNECT_S = 1.0
CONNECT_TIMEOUT_S = 5


class Replica(Protocol):
    """What the relay reaches of its coordinator."""

    host_waiters: Waiters
    log_waiters: Waiters
    last_seen: dict[str, float]
    leadership: Leadership

    def kick(self, *, jobs: Iterable[str] = (), hosts: Iterable[str] = ()) -> None: ...


class Relay(Protocol):
    """What a coordinator tells the other replicas beyond its waiters' wake-ups."""

    def kick(self, jobs: Iterable[str], hosts: Iterable[str]) -> None:
        """Ask the leader to schedule after this committed change (none named: a whole re-sync)."""
        ...

    def seen(self, host_id: str) -> None:
        """This replica just heard from the host's agent."""
        ...


class InProcess:
    """SQLite: one coordinator, always the leader; there is no other replica to tell."""

    def kick(self, jobs: Iterable[str], hosts: Iterable[str]) -> None:
        pass

    def seen(self, host_id: str) -> None:
        pass


@dataclass
class News:
    """What is to be told, gathered between two sends."""

    hosts: set[str] = field(default_factory=set)  # host_waiters keys
    logs: set[str] = field(default_factory=set)  # log_waiters keys
    kick_jobs: set[str] = field(default_factory=set)
    kick_hosts: set[str] = field(default_factory=set)
    kick_all: bool = False
    seen: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.hosts or self.logs or self.kick_jobs or self.kick_hosts or self.kick_all or self.seen
        )

    def payloads(self, origin: str) -> Iterator[str]:
        """The news as JSON payloads each under PAYLOAD_MAX_BYTES: the lists are cut into pieces."""
        keys = [("h", k) for k in self.hosts] + [("l", k) for k in self.logs]
        keys += [("kj", k) for k in self.kick_jobs] + [("kh", k) for k in self.kick_hosts]
        keys += [("s", k) for k in self.seen]
        message: dict[str, Any] = {"o": origin, "ka": self.kick_all}
        size = len(json.dumps(message))
        for kind, key in keys:
            cost = len(json.dumps(key)) + 8
            if size + cost > PAYLOAD_MAX_BYTES:
                yield json.dumps(message)
                message, size = {"o": origin, "ka": False}, 32
            message.setdefault(kind, []).append(key)
            size += cost
        yield json.dumps(message)


class Notifier:
    """The relay on PostgreSQL: sends this replica's news and applies the others'. `run` keeps one
    listening and one sending connection until cancelled, reconnecting after a failure. Not thread-safe:
    the coordinator's event loop alone calls it."""

    def __init__(self, database_url: str, replica: Replica) -> None:
        self.database_url = database_url
        self.replica = replica
        self.origin = uuid.uuid4().hex[:12]  # our own notifications come back to us: they are skipped
        self._news = News()
        self._seen: set[str] = set()  # sent once a second, not per turn of the loop
        self._pending = asyncio.Event()
        self._sightings_due = 0.0  # monotonic
        replica.host_waiters.relay = self._host_changed
        replica.log_waiters.relay = self._log_changed

    def _host_changed(self, key: str) -> None:
        self._news.hosts.add(key)
        self._pending.set()

    def _log_changed(self, key: str) -> None:
        self._news.logs.add(key)
        self._pending.set()

    def kick(self, jobs: Iterable[str], hosts: Iterable[str]) -> None:
        jobs, hosts = set(jobs), set(hosts)
        self._news.kick_jobs |= jobs
        self._news.kick_hosts |= hosts
        self._news.kick_all |= not (jobs or hosts)
        self._pending.set()

    def seen(self, host_id: str) -> None:
        self._seen.add(host_id)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen(), name="notify-listen")
            group.create_task(self._send(), name="notify-send")

    # --- sending -------------------------------------------------------------------------------------

    async def _send(self) -> None:
        conn: Any = None
        try:
            while True:
                news = await self._gather()
                try:
                    conn = conn or await self._connect()
                    for payload in news.payloads(self.origin):
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                except Exception as exc:  # the waits' own timeouts are the fallback: this news is dropped
                    log.warning("could not notify the other coordinators: %s", exc)
                    await _closed(conn)
                    conn = None
                    await asyncio.sleep(RECONNECT_S)
        finally:
            await _closed(conn)

    async def _gather(self) -> News:
        """The next news to send: changes as soon as there are some, sightings once a second."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SIGHTINGS_EVERY_S):
                    await self._pending.wait()
            self._pending.clear()
            news, self._news = self._news, News()
            if time.monotonic() >= self._sightings_due:
                news.seen, self._seen = self._seen, set()
                self._sightings_due = time.monotonic() + SIGHTINGS_EVERY_S
            if news:
                return news

    # --- listening -----------------------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._wake_all()  # anything may have changed while this replica was not listening
                    async for note in conn.notifies():
                        self.apply(note.payload)
            except Exception as exc:
                log.warning("not hearing the other coordinators' changes: %s", exc)
            await asyncio.sleep(RECONNECT_S)

    def apply(self, payload: str) -> None:
        """Apply another replica's news here: wake the waiters it names, note the hosts it saw, and (if
        this replica leads) schedule what it asks for."""
        message = json.loads(payload)
        if message.get("o") == self.origin:
            return
        replica = self.replica
        for key in message.get("h", ()):
            replica.host_waiters.wake(key)
        for key in message.get("l", ()):
            replica.log_waiters.wake(key)
        now = time.time()
        for host_id in message.get("s", ()):
            replica.last_seen[host_id] = max(replica.last_seen.get(host_id, 0.0), now)
        if not replica.leadership.leads:
            return
        if message.get("ka"):
            replica.kick()  # a whole re-sync covers whatever else it names
        elif message.get("kj") or message.get("kh"):
            replica.kick(jobs=message.get("kj", ()), hosts=message.get("kh", ()))

    def _wake_all(self) -> None:
        self.replica.host_waiters.wake_all()
        self.replica.log_waiters.wake_all()

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )


async def _closed(conn: Any) -> None:
    """Close a connection that may be dead already."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
