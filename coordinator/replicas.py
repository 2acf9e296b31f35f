"""A service's replicas: which one takes the next request (round robin over the ready ones), and whether
one is ready (a TCP check over its agent's channel).

A service is a job array (coordinator/array_ops.py) whose tasks are its replicas, one job each: each is
placed, retried and stopped as any job is. A replica takes requests while its job runs, no stop was asked,
its host's channel is open, and its port has accepted a connection: the check opens a tcp stream to the
port and half-closes it at once; a refusal (nothing listens yet, the job is gone) comes back as a Close
with an error, while an HTTP server answers the half-close by closing cleanly. A replica that passed stays
ready until a request to it fails; one that failed is checked again no sooner than RECHECK_S later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field

from coordinator.array_store import ArrayRow, ArrayStore
from coordinator.channels import AgentChannel, Channels, NoChannel, RelayStream
from coordinator.store import AllocRow, JobRow, Store
from shared.channel import MAX_STREAMS_PER_AGENT, Close, Eof, Open, TcpOpen
from shared.states import AllocState, JobState

# The agent connects to its own loopback, where a refusal is immediate: a check with no error after this
# long is a connection that a server holds open half-closed, and the replica counts as ready.
CHECK_WAIT_S = 2.0
RECHECK_S = 1.0
# Calls to services (and their checks) hold at most this many of one agent's streams at once: the others
# stay free for exec, ssh and port-forward, which a flood of calls that never end (to a service with
# auth: false, anyone's) would otherwise take from every job on the host.
SERVICE_STREAMS_PER_AGENT = MAX_STREAMS_PER_AGENT // 2


class Crowded(NoChannel):
    """Calls to services hold their whole share of the host's streams; one line."""


@dataclass(frozen=True)
class Replica:
    job: JobRow
    alloc: AllocRow
    channel: AgentChannel


@dataclass
class _Health:
    turn: int = 0  # round robin: the replica the next request starts from
    ready: set[str] = field(default_factory=set)  # allocation ids that passed the check
    failed_at: dict[str, float] = field(default_factory=dict)  # allocation id -> monotonic time

    def keep_only(self, alloc_ids: set[str]) -> None:
        self.ready &= alloc_ids
        self.failed_at = {a: t for a, t in self.failed_at.items() if a in alloc_ids}


class Replicas:
    """Every service's replicas and their health. Not thread-safe: the event loop only."""

    def __init__(self, store: Store, arrays: ArrayStore, channels: Channels) -> None:
        self.store, self.arrays, self.channels = store, arrays, channels
        self._health: dict[str, _Health] = {}  # by service (array) id
        self._held: dict[str, int] = {}  # streams open to replicas, by host

    def find(self, project: str, name: str) -> ArrayRow | None:
        """The project's newest service of that name with a replica still to finish."""
        for array in self.arrays.find(name, project):
            if array.name == name and array.spec.service is not None and self.arrays.tasks(array.id, False):
                return array
        return None

    def running(self, service: ArrayRow) -> list[Replica]:
        """Its replicas that may take requests, by index, ready or not."""
        found = []
        for job in self.arrays.tasks(service.id, False):
            if job.status is not JobState.RUNNING or job.stop_requested:
                continue
            alloc = self.store.latest_allocation(job.id)
            if alloc is None or alloc.state is not AllocState.RUNNING:
                continue
            with contextlib.suppress(NoChannel):
                found.append(Replica(job, alloc, self.channels.get(alloc.host_id)))
        return found

    async def in_turn(self, service: ArrayRow) -> AsyncGenerator[Replica, None]:
        """The ready replicas, round robin: the first is the one whose turn it is, the others follow (for a
        retry). A replica not known ready is checked first, and skipped if it fails."""
        replicas = self.running(service)
        if not replicas:
            self._health.pop(service.id, None)
            return
        health = self._health.setdefault(service.id, _Health())
        health.keep_only({r.alloc.id for r in replicas})
        start, health.turn = health.turn % len(replicas), health.turn + 1
        for replica in replicas[start:] + replicas[:start]:
            if await self._is_ready(replica, health):
                yield replica

    def failed(self, service: ArrayRow, replica: Replica) -> None:
        """A request to the replica could not reach it: check it again before the next one."""
        health = self._health.setdefault(service.id, _Health())
        health.ready.discard(replica.alloc.id)
        health.failed_at[replica.alloc.id] = time.monotonic()

    @contextlib.contextmanager
    def stream(self, replica: Replica) -> Iterator[RelayStream]:
        """A stream to the replica's host, within the services' share of its streams (Crowded past it),
        forgotten at the end. Raises NoChannel."""
        host = replica.alloc.host_id
        held = self._held.get(host, 0)
        if held >= SERVICE_STREAMS_PER_AGENT:
            raise Crowded(f"host {host}: calls to services hold {held} of its streams; try again later")
        stream = replica.channel.open()
        self._held[host] = held + 1
        try:
            yield stream
        finally:
            stream.channel.forget(stream)
            self._held[host] -= 1
            if not self._held[host]:
                del self._held[host]

    async def _is_ready(self, replica: Replica, health: _Health) -> bool:
        alloc_id = replica.alloc.id
        if alloc_id in health.ready:
            return True
        if time.monotonic() - health.failed_at.get(alloc_id, -RECHECK_S) < RECHECK_S:
            return False
        try:
            with self.stream(replica) as stream:
                ready = await tcp_check(stream, replica.alloc.id, service_port(replica))
        except Crowded:
            return False  # the replica is not at fault
        except NoChannel:
            ready = False
        if ready:
            health.ready.add(alloc_id)
            health.failed_at.pop(alloc_id, None)
            return True
        health.failed_at[alloc_id] = time.monotonic()
        return False


def service_port(replica: Replica) -> int:
    assert replica.job.spec.service is not None
    return replica.job.spec.service.port


async def tcp_check(stream: RelayStream, alloc_id: str, port: int) -> bool:
    """Whether the allocation's port accepts a connection, asked on `stream` (see the module's
    docstring)."""
    try:
        await stream.channel.send(Open(stream.id, TcpOpen(alloc_id, port)))
        await stream.channel.send(Eof(stream.id))
        try:
            async with asyncio.timeout(CHECK_WAIT_S):
                while not isinstance(frame := await stream.outbox.get(), Close):
                    pass
        except TimeoutError:
            return True
        return not frame.error
    except ConnectionError:
        return False
    finally:
        with contextlib.suppress(ConnectionError):
            await stream.channel.send(Close(stream.id))
