"""The coordinator's lease settings as `coordinator.yaml` spells them:

unreachable_after: 30s          # a host silent this long takes no new work (longer for a large fleet)
lost_after: 10m                 # ... and past this its allocations are lost; a job's `lost_after:` wins
fleet_lost_after: {dc1: 30m}    # per fleet, between the two
leader_lease: 10s               # replicas on PostgreSQL: a leader that stops renewing is replaced this late
"""

from __future__ import annotations

import dataclasses

from coordinator.settings import Settings
from shared.units import positive_duration_s

LEASE_SETTINGS = ("unreachable_after", "lost_after", "fleet_lost_after", "leader_lease")


def duration_setting(name: str, value: object) -> float:
    """A positive duration (`30s`, `10m`, or seconds); ValueError naming the setting otherwise."""
    try:
        return positive_duration_s(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def lease_settings(raw: dict, base: Settings) -> Settings:
    """`base` with the lease settings `raw` sets. Raises ValueError with one line naming the setting."""
    changes: dict[str, object] = {}
    if "unreachable_after" in raw:
        changes["unreachable_after_s"] = duration_setting("unreachable_after", raw["unreachable_after"])
    if "leader_lease" in raw:
        changes["leader_lease_s"] = duration_setting("leader_lease", raw["leader_lease"])
    if "lost_after" in raw:
        changes["lost_after_s"] = duration_setting("lost_after", raw["lost_after"])
    fleets = raw.get("fleet_lost_after", {})
    if not isinstance(fleets, dict):
        raise ValueError(f"fleet_lost_after: expected a mapping of fleet to duration, got {fleets!r}")
    if fleets:
        changes["fleet_lost_after_s"] = {
            str(fleet): duration_setting(f"fleet_lost_after.{fleet}", value)
            for fleet, value in fleets.items()
        }
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
