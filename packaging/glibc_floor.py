"""Print the oldest glibc that every ELF file under a folder can load with (e.g. `2.35`).

A shared object names each glibc symbol version it needs (`GLIBC_2.34`) in its dynamic string table; the highest
one across the bundle is the floor a host's glibc must meet. Usage: glibc_floor.py FOLDER
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_VERSION = re.compile(rb"GLIBC_(2\.[0-9]+(?:\.[0-9]+)?)\x00")


def needed(path: Path) -> set[tuple[int, ...]]:
    """The glibc versions named in one file (none for a file that is not ELF)."""
    data = path.read_bytes()
    if not data.startswith(b"\x7fELF"):
        return set()
    return {tuple(int(n) for n in m.group(1).split(b".")) for m in _VERSION.finditer(data)}


def floor(folder: Path) -> tuple[int, ...]:
    versions: set[tuple[int, ...]] = {(2, 17)}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            versions |= needed(path)
    return max(versions)


if __name__ == "__main__":
    print(".".join(str(n) for n in floor(Path(sys.argv[1]))))
