"""Memory sizes and durations, spelled the way dstack task files spell them.

Sizes are whole MiB (`int`); durations are whole seconds (`int`). Parsers raise `ValueError` with a one-line
message saying what was expected; formatters produce text the matching parser reads back to the same value.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

MIB_PER_GIB = 1024
MIB_PER_TIB = 1024 * 1024

# Every unit is binary: "GB" and "GiB" both mean 1024 MiB, as in dstack.
_MIB_PER_UNIT = {
    "m": 1,
    "mb": 1,
    "mib": 1,
    "g": MIB_PER_GIB,
    "gb": MIB_PER_GIB,
    "gib": MIB_PER_GIB,
    "t": MIB_PER_TIB,
    "tb": MIB_PER_TIB,
    "tib": MIB_PER_TIB,
    "": MIB_PER_GIB,  # a bare number means GB
}
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", re.IGNORECASE | re.ASCII)

_SECONDS_PER_UNIT = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:\d+\s*[wdhms]\s*)+", re.IGNORECASE | re.ASCII)
_DURATION_PART_RE = re.compile(r"(\d+)\s*([wdhms])", re.IGNORECASE | re.ASCII)


def parse_memory_mib(value: str | int | float) -> int:
    """A size in MiB, rounded to the nearest MiB.

    Accepts "80GB", "512MB", "1.5TB", "24 GB", "80GiB", "80G" (case-insensitive; GB, GiB and G all mean
    1024 MiB, TB means 1024 GiB), and a bare number (int, float or numeric text) meaning GB, as dstack does.
    Negative, non-finite and boolean values are rejected.
    """
    expected = f"expected a size like 80GB or 512MB, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(expected)
        return round(Decimal(repr(value)) * MIB_PER_GIB)
    if not isinstance(value, str):
        raise ValueError(expected)
    match = _SIZE_RE.fullmatch(value.strip())
    if match is None or match[2].lower() not in _MIB_PER_UNIT:
        raise ValueError(expected)
    return round(Decimal(match[1]) * _MIB_PER_UNIT[match[2].lower()])


def parse_duration_s(value: str | int) -> int:
    """A duration in seconds.

    Accepts "2h", "30m", "45s", "1d", "1w", combinations such as "1h30m" or "1d 2h", digits alone meaning
    seconds, and a non-negative int meaning seconds. Fractions, negatives and booleans are rejected.
    """
    expected = f"expected a duration like 2h, 30m, 45s, 1d or 1h30m, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(expected)
        return value
    if not isinstance(value, str):
        raise ValueError(expected)
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(expected)
    return sum(int(n) * _SECONDS_PER_UNIT[unit.lower()] for n, unit in _DURATION_PART_RE.findall(text))


def format_mib(mib: int) -> str:
    """Short text for a size in MiB: 81920 -> "80GB", 512 -> "512MB", 1572864 -> "1.5TB".

    Uses the largest unit that shows the value exactly with at most two decimals, so
    `parse_memory_mib(format_mib(n)) == n` for every n >= 0. Raises ValueError for a negative size.
    """
    if isinstance(mib, bool) or not isinstance(mib, int) or mib < 0:
        raise ValueError(f"expected a non-negative whole number of MiB, got {mib!r}")
    for unit, mib_per_unit in (("TB", MIB_PER_TIB), ("GB", MIB_PER_GIB)):
        if mib >= mib_per_unit:
            number = f"{Decimal(mib) / mib_per_unit:.2f}".rstrip("0").rstrip(".")
            text = f"{number}{unit}"
            if parse_memory_mib(text) == mib:
                return text
    return f"{mib}MB"


def format_duration_s(seconds: int) -> str:
    """Short text for a duration: 5400 -> "1h30m", 86400 -> "1d", 0 -> "0s".

    `parse_duration_s(format_duration_s(n)) == n` for every n >= 0. Raises ValueError for a negative duration.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        raise ValueError(f"expected a non-negative whole number of seconds, got {seconds!r}")
    parts = []
    remaining_s = seconds
    for unit in ("d", "h", "m", "s"):
        count, remaining_s = divmod(remaining_s, _SECONDS_PER_UNIT[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def positive_duration_s(value: object) -> float:
    """A setting's duration (`30s`, `10m`, or seconds) that must be longer than 0. ValueError with one line."""
    try:
        seconds = parse_duration_s(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ValueError(f"expected a duration like 30s or 10m, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"must be longer than 0s, got {value!r}")
    return float(seconds)
