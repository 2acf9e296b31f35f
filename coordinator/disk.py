"""The coordinator's free-space floor: below it, new submits and uploads are refused (507) with a reason that
names the disk, while running jobs keep shipping their logs (each is capped, see agent/logcap.py).

The reading is pluggable (`usage`, default `shutil.disk_usage`); tests prefer a real reading with a floor
above the disk's free space.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from shared.units import parse_memory_mib


class Usage(NamedTuple):
    total: int
    used: int
    free: int


DiskUsage = Callable[[Path], Usage]


def real_usage(path: Path) -> Usage:
    return Usage(*shutil.disk_usage(path))


def format_bytes(size: int) -> str:
    """Short text for a byte count: 312 MiB, 1 GiB, 1.5 GiB, 900 KiB, 12 B."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} B"


def parse_size_bytes(field: str, value: object) -> int:
    """A setting's size (`1GiB`, `512MB`) in bytes. Raises ValueError naming the field."""
    try:
        return parse_memory_mib(value) * 1024 * 1024  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def parse_floor(value: object) -> tuple[int, float]:
    """`disk_floor`: a size (`1GiB`) or a share of the disk (`5%`); answers (bytes, percent)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            percent = -1.0
        if not 0 <= percent < 100:
            raise ValueError(f"disk_floor: expected a size like 1GiB or a share like 5%, got {value!r}")
        return 0, percent
    return parse_size_bytes("disk_floor", value), 0.0


class DiskGuard:
    def __init__(self, path: Path, floor_bytes: int, floor_percent: float, usage: DiskUsage) -> None:
        self.path = path
        self.floor_bytes = floor_bytes
        self.floor_percent = floor_percent
        self.usage = usage

    def low(self) -> str | None:
        """The reason to refuse new work when the disk's free space is under the floor, else None. Safe
        concurrently; a reading that fails counts as no reading (the write itself will tell)."""
        try:
            usage = self.usage(self.path)
        except OSError:
            return None
        floor = max(self.floor_bytes, int(usage.total * self.floor_percent / 100))
        if floor <= 0 or usage.free >= floor:
            return None
        share = f" ({self.floor_percent:g}% of {format_bytes(usage.total)})" if self.floor_percent else ""
        return (
            f"coordinator disk {self.path} has {format_bytes(usage.free)} free, under its "
            f"{format_bytes(floor)}{share} floor; an admin must free space there"
        )
