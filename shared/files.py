"""Writing files so that a crash leaves the old content or the new, never a torn mix; and writing, as root,
into a folder a job filled, where a link must be replaced, never followed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`. Not `durable`:
    no flush to disk, for a file nothing reads after a crash of the machine (an fsync per job start was a
    tenth of the agent's wall time in a run of 400 `true` jobs on one host)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_fresh(path: Path, data: bytes, mode: int) -> None:
    """Write `path` in a folder whose content a job chose (its work dir, filled from its `files:` and
    `repos:`): whatever is there goes first, a link removed rather than followed (a link `.ssh -> /etc`
    would have the caller, root, write the host's files), and the file is made anew with exactly `mode`."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # not the umask's
        f.write(data)


def fresh_folder(path: Path) -> None:
    """`path` as a folder of its own, in a folder whose content a job chose: a link or a file there is
    replaced by an empty folder, a folder kept."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
