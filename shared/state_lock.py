"""One daemon per state dir: two agents on one journal would each remove the other's allocations; a
coordinator's state dir is restored from a backup only while no coordinator runs on it.

The daemon holds an exclusive `flock` on a file of its state dir (`agent.lock`, `coordinator.lock`) for its
whole life, with its pid written in the file. The kernel drops the lock when the process ends, however it ends, so a stale file never blocks a
restart. The descriptor is close-on-exec: jobs, whose supervisors outlive the agent, never inherit it. It is
open read-only (flock needs no more; the pid is written through a second, short-lived descriptor), so the
lock never keeps the state dir's file system from being remounted read-only, a fault the agent must live
through.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class StateDirBusy(OSError):
    """Another live daemon holds the state dir; the message names its pid and says what to do."""


@contextlib.contextmanager
def hold_state_dir(state_dir: Path, lock_file: str, program: str) -> Iterator[None]:
    """Hold the state dir's lock `lock_file` while in the block. Raises StateDirBusy at once if another
    process (or another holder in this one) has it; its message names `program`. Not reentrant."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / lock_file
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateDirBusy(
                f"another {program} (pid {holder}) is using {state_dir}; stop it first"
            ) from None
        with open(path, "w") as f:  # ours now: no other agent reads or writes it
            f.write(f"{os.getpid()}\n")
        yield
    finally:
        os.close(fd)  # releases the lock
