"""The oldest glibc that every ELF file under a folder can load with, and the libraries it takes from the host.

Each undefined dynamic symbol that a shared object takes from glibc carries the symbol version it needs
(`GLIBC_2.34`), as `objdump -T` (binutils) shows; the highest across the bundle is the floor a host's glibc
must meet. The libraries a file names (NEEDED, `objdump -p`) that the bundle does not carry come from the host.

Usage: glibc_floor.py [--explain] FOLDER  (prints e.g. `2.31`; --explain adds the file that sets it and the host's
libraries)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_VERSION = re.compile(r"\bGLIBC_(2\.[0-9]+(?:\.[0-9]+)?)\b")
_NEEDED = re.compile(r"^\s*NEEDED\s+(\S+)", re.MULTILINE)

Version = tuple[int, ...]


def elf_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def glibc_versions(path: Path, objdump: str = "objdump") -> set[Version]:
    """The glibc symbol versions one ELF file requires (its undefined dynamic symbols' versions)."""
    out = subprocess.run([objdump, "-T", str(path)], capture_output=True, text=True, check=True).stdout
    return {
        tuple(int(n) for n in m.group(1).split("."))
        for line in out.splitlines()
        if "*UND*" in line
        for m in _VERSION.finditer(line)
    }


def needed(path: Path, objdump: str = "objdump") -> set[str]:
    out = subprocess.run([objdump, "-p", str(path)], capture_output=True, text=True, check=True).stdout
    return set(_NEEDED.findall(out))


def floor(folder: Path, objdump: str = "objdump") -> tuple[Version, Path | None]:
    """The highest glibc version any ELF file under `folder` requires, and that file (2.17 and None: none)."""
    best: tuple[Version, Path | None] = ((2, 17), None)
    for path in elf_files(folder):
        for version in glibc_versions(path, objdump):
            if version > best[0]:
                best = (version, path)
    return best


def from_host(folder: Path, objdump: str = "objdump") -> set[str]:
    """The shared libraries that the ELF files under `folder` need and that the folder does not carry."""
    files = elf_files(folder)
    carried = {p.name for p in folder.rglob("*")}
    return {name for path in files for name in needed(path, objdump)} - carried


def dotted(version: Version) -> str:
    return ".".join(str(n) for n in version)


if __name__ == "__main__":
    explain = "--explain" in sys.argv
    folder = Path([a for a in sys.argv[1:] if a != "--explain"][0])
    version, where = floor(folder)
    print(dotted(version))
    if explain:
        print(f"set by: {where}")
        print(f"from the host: {' '.join(sorted(from_host(folder)))}")
