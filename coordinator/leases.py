"""Host leases, as pure functions: every sync renews a host's lease; a host silent past `unreachable_after`
takes no new work (its allocations show `unknown`), and past `lost_after` its allocations are lost.

Liveness lives in memory: a restarted coordinator counts every host as seen when it started, so each gets
one full `unreachable_after` before it is judged. The lease grows with the fleet, so that heartbeats stay
bounded (Nomad caps them per second): each agent must sync at least every half lease.
"""

from __future__ import annotations

MAX_HEARTBEATS_PER_S = 50.0


def unreachable_after_s(setting_s: float, host_count: int) -> float:
    """The lease: the setting, or longer for a fleet so large that `MAX_HEARTBEATS_PER_S` would not
    renew every lease in time."""
    return max(setting_s, 2 * host_count / MAX_HEARTBEATS_PER_S)


def poll_timeout_s(setting_s: float, lease_s: float) -> float:
    """How long a sync may be held: at most half the lease, so a held agent renews it in time."""
    return min(setting_s, lease_s / 2)


def silent_s(now: float, last_seen: float | None, coordinator_started_at: float) -> float:
    """How long the host has been silent, as far as this coordinator process can tell."""
    return max(0.0, now - max(last_seen or 0.0, coordinator_started_at))


def lost_after_s(job_s: int | None, fleet_s: float | None, default_s: float) -> float:
    """The job's own `lost_after`, else its host's fleet's, else the coordinator's."""
    if job_s is not None:
        return float(job_s)
    return fleet_s if fleet_s is not None else default_s
