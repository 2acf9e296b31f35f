"""One agent per state dir (shared/state_lock.py): two agents on one journal would each remove the other's
allocations."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from shared import state_lock
from shared.state_lock import StateDirBusy

LOCK_FILE = "agent.lock"
__all__ = ["LOCK_FILE", "StateDirBusy", "hold_state_dir"]


def hold_state_dir(state_dir: Path) -> AbstractContextManager[None]:
    """Hold the agent's state dir while in the block; StateDirBusy at once if another agent has it."""
    return state_lock.hold_state_dir(state_dir, LOCK_FILE, "gpuctl-agent")
