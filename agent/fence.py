"""Self-fencing (`stop_after_coordinator_lost` in agent.yaml, off by default): an agent that has had no
successful sync for that long stops its jobs, each with its grace period, and keeps trying to sync.

Why: past the coordinator's `lost_after` a job that retries on `interruption` runs again elsewhere, and the
cut-off copy would run on until its host is heard again. A site that would rather stop work than run it
twice sets this below its `lost_after`; the agent needs no word from the coordinator to do it.
"""

from __future__ import annotations

from shared.units import format_duration_s, positive_duration_s


def parse_stop_after_s(value: object) -> float | None:
    """The setting as seconds; None (off) for None. ValueError with one line otherwise."""
    if value is None:
        return None
    return positive_duration_s(value)


def fence_reason(now_s: float, last_sync_s: float, stop_after_s: float | None) -> str:
    """Why every job must stop now, or "" while the coordinator counts as reachable (or fencing is off).
    Pure; the reason is the same on every call, so it reads well as each job's stop reason."""
    if stop_after_s is None or now_s - last_sync_s < stop_after_s:
        return ""
    return (
        f"no successful sync with the coordinator for {format_duration_s(int(stop_after_s))} "
        "(stop_after_coordinator_lost)"
    )
