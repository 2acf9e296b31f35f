"""The state dir's health: a full or read-only disk must cost new work, never the agent or running jobs.

The executor loop probes the state dir on every tick and catches disk errors of its own writes; while a
problem stands, the inventory the agent sends carries it (`no_new_work` and a host warning), so the
coordinator places nothing here and `gpuctl hosts` says why. Running jobs go on and stop as asked.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec

from shared.wire import Inventory

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})
MIN_FREE_BYTES = 1 << 20  # below this a job's start (its journal, its spool) would fail half-way


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disk_problem(state_dir: Path) -> str:
    """Why the state dir cannot take new work now, in one line; "" when it can. Cheap: one statvfs."""
    try:
        st = os.statvfs(state_dir)
    except OSError as exc:
        return f"state dir unreadable: {exc.strerror}"
    if st.f_flag & os.ST_RDONLY:
        return "state dir read-only"
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        return f"state dir full: {free} bytes free"
    return ""


def with_disk_problem(inventory: Inventory, problem: str) -> Inventory:
    """The inventory to send: unchanged when there is no problem, else marked as taking no new work."""
    if not problem:
        return inventory
    return msgspec.structs.replace(
        inventory,
        no_new_work=problem,
        warnings=(*inventory.warnings, f"{problem}; no new work is placed here"),
    )
