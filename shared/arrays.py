"""Slurm's job array syntax, as `sbatch --array` reads it: `0-15`, `0,6,16-32`, `0-15:4` (every 4th),
and a `%N` suffix that lets at most N tasks of the array run at once (`1-1000%50`).

Indices are whole numbers from 0 to MAX_ARRAY_INDEX; repeated indices count once (Slurm keeps a bitmap).
The CLI parses the text to refuse a typo before anything is uploaded; the coordinator parses it again,
with its own cap on the number of tasks. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from shared.spec import SpecError

MAX_ARRAY_INDEX = 4_000_000  # Slurm's own ceiling (its MaxArraySize may be at most 4,000,001)
MAX_ARRAY_CHARS = 10_000  # the text of one --array value

_PART = re.compile(r"([0-9]{1,7})(?:-([0-9]{1,7})(?::([0-9]{1,7}))?)?")
_LIMIT = re.compile(r"%([0-9]{1,7})")


@dataclass(frozen=True)
class ArraySpec:
    indices: tuple[int, ...]  # sorted, each once
    limit: int  # at most this many tasks placed at once; 0: no limit
    text: str  # the indices as written, without the `%N`: "1-1000", "0,6,16-32"


def parse_array(text: str, max_tasks: int, source: str = "spec") -> ArraySpec:
    """The array `text` describes; SpecError naming the field `array` for anything Slurm would refuse, or
    for more than `max_tasks` tasks (counted before any list of indices is built)."""
    ranges, limit, indices_text = _parts(text, source)
    count = sum(len(r) for r in ranges)
    if count > max_tasks:
        raise SpecError(
            "array", f"{count} tasks is over the coordinator's limit of {max_tasks} per array", source=source
        )
    indices = tuple(sorted({i for r in ranges for i in r}))
    return ArraySpec(indices, limit, indices_text)


def check_array(text: str, source: str = "spec") -> None:
    """Refuse what Slurm would refuse, without building the indices (the CLI's early check: the
    coordinator alone knows its cap on tasks). Raises SpecError naming the field `array`."""
    _parts(text, source)


def _parts(text: str, source: str) -> tuple[list[range], int, str]:
    """The ranges, the `%N` limit (0: none) and the indices' text."""

    def bad(message: str) -> SpecError:
        return SpecError("array", message, source=source)

    if len(text) > MAX_ARRAY_CHARS:
        raise bad(f"over {MAX_ARRAY_CHARS} characters")
    indices_text, percent, limit_text = text.partition("%")
    limit = 0
    if percent:
        if not _LIMIT.fullmatch(percent + limit_text):
            raise bad(f"expected a number of tasks after %, got {limit_text!r}")
        limit = int(limit_text)
        if limit < 1:
            raise bad("%0 would run no task: give at least %1")
    return [_range(part, bad) for part in indices_text.split(",")], limit, indices_text


def _range(part: str, bad: Callable[[str], SpecError]) -> range:
    """One comma-separated piece: `N`, `A-B` or `A-B:STEP`."""
    match = _PART.fullmatch(part)
    if match is None:
        raise bad(f"expected N, A-B or A-B:STEP (as in 0-15, 0,6,16-32 or 0-15:4), got {part!r}")
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    step = int(match[3]) if match[3] is not None else 1
    if last > MAX_ARRAY_INDEX:
        raise bad(f"index {last} is over the largest index, {MAX_ARRAY_INDEX}")
    if last < first:
        raise bad(f"{part!r} ends before it starts")
    if step < 1:
        raise bad(f"{part!r}: the step must be at least 1")
    return range(first, last + 1, step)
