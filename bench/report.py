"""The bench's figures as people read them: percentiles, and tables that fit 80 columns.

Pure functions over plain data (tests/test_bench_report.py): every section returns a dict with a "rows"
list of flat dicts, and `table()` turns one such list into lines of text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

WIDTH = 80


def percentile(values: Sequence[float], p: float) -> float:
    """The `p`-th percentile (0-100) by the nearest-rank method: a value that was measured, never an
    interpolation between two. Raises ValueError on an empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile: p must be within 0..100, got {p}")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90 and best of durations given in seconds, in milliseconds: how (e) states a call's cost."""
    return {
        "median_ms": percentile(seconds, 50) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "best_ms": min(seconds) * 1000,
    }


def cell(value: object) -> str:
    """A value as a table shows it: floats to three significant figures, thousands separated, None as a
    dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"
    return str(value)


def table(rows: Sequence[dict[str, object]], width: int = WIDTH) -> list[str]:
    """Rows of flat dicts as aligned lines, columns in the order of the first row's keys (later rows may
    lack some: a dash). Numbers align right, text left. A row wider than `width` has its text columns cut
    short with "~", widest first, so the table fits."""
    if not rows:
        return []
    columns = list(rows[0])
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all(_is_number(row.get(c)) for row in rows if c in row) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    _shrink(widths, numeric, width)
    header = [_fit(c, w, n) for c, w, n in zip(columns, widths, numeric, strict=True)]
    lines = ["  ".join(header).rstrip(), "  ".join("-" * w for w in widths)]
    for r in cells:
        lines.append("  ".join(_fit(v, w, n) for v, w, n in zip(r, widths, numeric, strict=True)).rstrip())
    return lines


def _is_number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _shrink(widths: list[int], numeric: list[bool], width: int) -> None:
    """Narrow the widest text column, one character at a time, until the line fits (never under 6)."""
    while sum(widths) + 2 * (len(widths) - 1) > width:
        text = [i for i, n in enumerate(numeric) if not n and widths[i] > 6]
        if not text:
            return
        widest = max(text, key=lambda i: widths[i])
        widths[widest] -= 1


def _fit(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        text = text[: width - 1] + "~"
    return text.rjust(width) if right else text.ljust(width)
