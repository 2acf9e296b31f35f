"""Short texts for people that need no table: what a user, an agent or a driver wrote made safe to print, and
the line `submit` prints while a job waits. Apart from cli/render.py so that `submit` and `logs` print them
without importing rich (~35 ms of a CLI call)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.wire import JobView, ScheduleSummary

# Escape sequences whole (CSI `ESC [ ... m`, OSC `ESC ] ... BEL`, two-character ones), then any other C0 or C1
# control, DEL included: what a user, an agent or a driver wrote must not move the cursor or recolour a terminal.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """User-supplied text made safe to print: escape sequences and control characters removed, line
    breaks and tabs as spaces. Pure."""
    text = _CONTROLS.sub("", _ESCAPES.sub("", text))
    return text.replace("\t", " ").replace("\n", " ")


PROGRESS_BAR_CHARS = 20


def waiting_line(job: JobView) -> str:
    """What `submit` prints while a job waits: its pending reason, or its image pull as a progress bar
    (`pulling nvcr.io/nvidia/pytorch:24.08-py3 [#######.............] 35%`)."""
    if job.allocation_status == "unknown":
        return f"{job.status} {'to' if job.status == 'assigned' else 'on'} {clean(job.host or '?')}, waiting for it: {clean(job.reason)}"
    if job.status != "pulling":
        return f"{job.status}: {clean(with_start(job.reason, job.estimated_start))}"
    image = clean(job.spec.image or "image")
    match = re.fullmatch(r"pulling (\d+)%", job.reason)
    if not match:
        return f"pulling {image}"
    percent = min(100, int(match.group(1)))
    done = percent * PROGRESS_BAR_CHARS // 100
    return f"pulling {image} [{'#' * done}{'.' * (PROGRESS_BAR_CHARS - done)}] {percent}%"


def with_start(reason: str, estimated_start: float | None) -> str:
    """A waiting job's reason, with the start its backfill reservation expects where it gives one
    (`...; blocks reserved on h3; estimated start 2026-11-29 14:05 UTC`). Pure."""
    if estimated_start is None:
        return reason
    return f"{reason}; estimated start {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(estimated_start))}"


def schedule_line(schedule: ScheduleSummary) -> str:
    """`next run 2026-11-30 03:00 UTC (cron 0 3 * * *); ran nightly@2026-11-29T03:00`. Pure."""
    lines = "; ".join(schedule.cron)
    if schedule.next_run_at is None:
        text = f"stopped (cron {lines})"
    else:
        at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(schedule.next_run_at))
        text = f"next run {at} (cron {lines})"
    return f"{text}; {schedule.last_note}" if schedule.last_note else text
