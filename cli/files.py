"""Packing a job's `files:` into a tar.gz in memory, bounded, for the coordinator to store.

A directory is packed whole except `.git` and what git would ignore in it (see cli/gitignore.py): its
`.gitignore` and those of its subfolders, each applying below its own folder. Only `.gitignore` files
inside the packed directory count, not those of folders above it, `.git/info/exclude` or a global
excludes file, so a job gets the same files wherever it is submitted from. Symbolic links are kept as
links (the agent refuses any that would escape the working directory); like git, they never count as
folders for a pattern ending in '/', and a `.gitignore` that is one is not followed.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from collections.abc import Iterable
from pathlib import Path

from cli import gitignore
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
                _add_dir(tar, source, remote)
            else:
                tar.add(source, arcname=remote, recursive=False, filter=_anonymous)
    return bytes(sink.buffer)


def _add_dir(tar: tarfile.TarFile, root: Path, remote: str) -> None:
    """Add `root` and what is not ignored below it; an ignored folder is not walked, so nothing in it can
    be re-included (git's rule too)."""
    tar.add(root, arcname=remote, recursive=False, filter=_anonymous)
    stacks: dict[str, tuple[gitignore.RuleSet, ...]] = {}
    for folder, dirs, names in os.walk(root):
        relative = Path(folder).relative_to(root)
        base = relative.as_posix() if relative != Path() else ""
        stack = (stacks[posixpath.dirname(base)] if base else ()) + _rules_in(Path(folder), base)
        stacks[base] = stack
        dirs[:] = sorted(d for d in dirs if not _skipped(base, d, not Path(folder, d).is_symlink(), stack))
        for name in dirs + sorted(n for n in names if not _skipped(base, n, False, stack)):
            path = posixpath.join(base, name)
            arcname = os.path.normpath(os.path.join(remote, path))
            tar.add(root / path, arcname=arcname, recursive=False, filter=_anonymous)


def _rules_in(folder: Path, base: str) -> tuple[gitignore.RuleSet, ...]:
    """The rules of `folder`'s .gitignore (`base` is the folder relative to the packed one), as a stack
    entry; none when it has none, or when it is a symbolic link, which git does not follow."""
    path = folder / ".gitignore"
    if path.is_symlink():
        return ()
    try:
        return (gitignore.parse(path.read_bytes(), base),)
    except OSError:
        return ()


def _skipped(base: str, name: str, is_dir: bool, stack: tuple[gitignore.RuleSet, ...]) -> bool:
    """Whether the entry `name` of folder `base` stays out: `.git`, or what the .gitignore files say."""
    return name in ALWAYS_SKIPPED or gitignore.ignored(posixpath.join(base, name), is_dir, stack)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No local user or group names in the archive: the job's user owns its files on the host."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
