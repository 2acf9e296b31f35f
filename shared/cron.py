"""Cron lines, in UTC: check one, and the times a schedule of several fires. Pure.

Standard five fields (minute hour day-of-month month day-of-week) with `*`, lists, ranges, steps, names
(`mon`, `jan`) and Vixie cron's rule that a restricted day-of-month and day-of-week match when either does.
The matching is cronsim's (a small, maintained, dependency-free parser that names the field it refuses);
this module adds what cronsim leaves open: exactly five fields (it would take a sixth, for seconds), and the
"latest time due" that catching up after a coordinator was down needs. Imported lazily (only a spec with a
`schedule` pays for it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRONSIM_FIELDS = {"minute": 0, "hour": 1, "day-of-month": 2, "month": 3, "day-of-week": 4}
_ONE_VALUE_STEPPED = re.compile(r"(?:^|,)(\w+)-\1/")
_ANY_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # any start: a line's fields are checked when it is read


def cron_problem(line: str) -> str | None:
    """Why `line` is not a five-field cron line (one line naming the field), or None if it is one."""
    fields = line.split()
    if len(fields) != len(FIELDS):
        return f"expected 5 fields ({' '.join(FIELDS)}), got {len(fields)} in {line!r}"
    for name, field in zip(FIELDS, fields, strict=True):
        if _ONE_VALUE_STEPPED.search(field):  # cronsim would run `5-5/2` from 5 to the field's end
            return (
                f"bad {name} field {field!r} in {line!r}: a range of one value with a step; write the value"
            )
    try:
        CronSim(line, _ANY_TIME)
    except CronSimError as exc:
        # cronsim says "Bad hour", "Bad day-of-month", ...: say which value of the line that is
        name = str(exc).removeprefix("Bad ")
        if name in _CRONSIM_FIELDS:
            return f"bad {name} field {fields[_CRONSIM_FIELDS[name]]!r} in {line!r}"
        return f"{str(exc).lower()} in {line!r}"
    return None


def next_time(lines: Sequence[str], after: datetime) -> datetime:
    """The first time strictly after `after` at which any of `lines` fires (a UTC-aware datetime)."""
    return min(next(CronSim(line, after.astimezone(UTC))) for line in lines)


def latest_due(lines: Sequence[str], after: datetime, now: datetime) -> datetime | None:
    """The latest time in (`after`, `now`] at which any of `lines` fires, or None if none does: a
    coordinator that slept over several times fires once, for the latest of them."""
    # cronsim's reverse walk starts strictly before its start: one second past `now` (whole seconds;
    # cron times fall on them) makes `now` itself count.
    start = now.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    latest = max(next(CronSim(line, start, reverse=True)) for line in lines)
    return latest if latest > after else None
