"""Packing a job's `files:` into a tar.gz in memory, bounded, for the coordinator to store.

A directory is packed whole except `.git/` and what its top-level `.gitignore` names (plain `fnmatch`
patterns: `*.pt`, `data/`, `/build`; no `!` negation, no nested .gitignore files). Symbolic links are
kept as links (the agent refuses any that would escape the working directory).
"""

from __future__ import annotations

import fnmatch
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from shared import constants as C
from shared.spec import SpecError

ALWAYS_SKIPPED = (".git",)


class _Bounded(io.RawIOBase):
    """An in-memory sink that refuses to grow past `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.buffer = bytearray()
        self.max_bytes = max_bytes

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(self.buffer) + len(data) > self.max_bytes:
            raise SpecError(
                "files",
                f"the archive is over {self.max_bytes // (1024 * 1024)} MiB; list fewer files or add large "
                "ones to .gitignore",
                source="submit",
            )
        self.buffer += data
        return len(data)


def pack(pairs: Iterable[tuple[str, str]], base: Path, max_bytes: int = C.MAX_FILES_ARCHIVE_BYTES) -> bytes:
    """A tar.gz of each (local, path in the working directory) pair; relative local paths are resolved
    against `base`, `~` is expanded. Raises SpecError (field `files`, one line) for a missing path or an
    archive over `max_bytes`."""
    sink = _Bounded(max_bytes)
    with tarfile.open(fileobj=sink, mode="w:gz") as tar:
        for local, remote in pairs:
            source = base / Path(local).expanduser()
            if not source.exists() and not source.is_symlink():
                raise SpecError("files", f"no such file or directory: {str(source)!r}", source="submit")
            if source.is_dir() and not source.is_symlink():
                _add_dir(tar, source, remote, _ignore_patterns(source))
            else:
                tar.add(source, arcname=remote, recursive=False, filter=_anonymous)
    return bytes(sink.buffer)


def _add_dir(tar: tarfile.TarFile, root: Path, remote: str, patterns: list[str]) -> None:
    tar.add(root, arcname=remote, recursive=False, filter=_anonymous)
    for folder, dirs, names in os.walk(root):
        relative = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not ignored((relative / d).as_posix(), True, patterns))
        for name in sorted(dirs) + sorted(names):
            path = relative / name
            if name in names and ignored(path.as_posix(), False, patterns):
                continue
            arcname = os.path.normpath(os.path.join(remote, path))
            tar.add(root / path, arcname=arcname, recursive=False, filter=_anonymous)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No local user or group names in the archive: the job's user owns its files on the host."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _ignore_patterns(root: Path) -> list[str]:
    try:
        lines = (root / ".gitignore").read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "!"))]


def ignored(relative: str, is_dir: bool, patterns: list[str]) -> bool:
    """Whether a path (relative to the packed folder, with '/') is skipped: `.git`, or a .gitignore pattern.
    A pattern with a '/' (other than at its end) matches the whole path from the top; one without matches
    any path's last part; a trailing '/' matches folders only."""
    name = relative.rsplit("/", 1)[-1]
    if name in ALWAYS_SKIPPED:
        return True
    for pattern in patterns:
        folder_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if folder_only and not is_dir:
            continue
        if "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False
