"""A coordinator that shares its PostgreSQL with other replicas: its keys checked against theirs
(cluster_keys.py), the leadership lease that decides which one schedules (leader.py), and the notifications
that carry each one's changes to the others (notify.py). On SQLite there is nothing to share: the
coordinator keeps its defaults (always the leader, nothing relayed)."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from coordinator.cluster_keys import check_cluster_keys
from coordinator.leader import LeaseLeadership
from coordinator.notify import Notifier
from coordinator.pki import PkiPaths
from coordinator.secrets import ensure_key
from coordinator.service import Coordinator


@dataclass(frozen=True)
class Replication:
    leadership: LeaseLeadership
    notifier: Notifier

    def start(self, coordinator: Coordinator, port: int) -> list[asyncio.Task[None]]:
        """Stand for leadership and listen; the holder's name says which replica leads (`host:port pid`)."""
        self.leadership.holder = f"{socket.gethostname()}:{port} pid {os.getpid()}"
        return [
            asyncio.create_task(self.leadership.run(coordinator.set_leading), name="coordinator-leadership"),
            asyncio.create_task(self.notifier.run(), name="coordinator-notify"),
        ]


def join_replicas(coordinator: Coordinator, state_dir: Path) -> Replication | None:
    """Before serving: on PostgreSQL, refuse keys that differ from the other replicas' (KeyMismatch), and
    make this coordinator a follower that relays its changes until it wins the lease. None on SQLite."""
    store = coordinator.store
    if store.kind != "postgresql":
        return None
    check_cluster_keys(store, PkiPaths.under(state_dir).ca_cert.read_bytes(), ensure_key(state_dir))
    leadership = LeaseLeadership(store.database_url, "", coordinator.settings.leader_lease_s)
    notifier = Notifier(store.database_url, coordinator)
    coordinator.leadership, coordinator.relay = leadership, notifier
    return Replication(leadership, notifier)
