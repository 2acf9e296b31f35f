"""`gpuctl usage`: what finished jobs used, per project and user (Slurm's sreport), or one line per job with
`--jobs` (sacct). GPU-hours are the numbers fair share weighs, undecayed. Plain columns that fit 80."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from shared.accounting import JobUsage, UsageLine, UsageReport

SUMMARY = (("PROJECT", 16, "<"), ("USER", 16, "<"), ("JOBS", 6, ">"), ("GPU-HOURS", 10, ">"))
JOBS = (
    ("JOB", 8, "<"),
    ("NAME", 11, "<"),
    ("PROJECT", 10, "<"),
    ("USER", 8, "<"),
    ("STATE", 7, "<"),
    ("ELAPSED", 7, ">"),
    ("GPUS", 4, ">"),
    ("GPU-H", 6, ">"),
)
READINGS = (("UTIL", 4, ">"), ("PEAK", 6, ">"))  # the last columns of both tables


@click.command("usage")
@click.option("--project", default="", help="Only this project's jobs (a member sees its own project alone).")
@click.option("--user", default="", help="Only the jobs this user submitted.")
@click.option("--since", default="7d", show_default=True, help="Jobs that finished this long ago or later.")
@click.option("--jobs", "list_jobs", is_flag=True, help="One line per finished job (sacct-like).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def usage(project: str, user: str, since: str, list_jobs: bool, as_json: bool) -> None:
    """GPU-hours, mean GPU utilization and peak GPU memory of finished jobs, per project and user."""
    import msgspec

    from cli.session import call

    report = call(lambda client: client.usage(since, project, user, list_jobs))
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
        return
    for line in job_lines(report) if list_jobs else summary_lines(report):
        click.echo(line)


def summary_lines(report: UsageReport) -> list[str]:
    """The table of `gpuctl usage`, a total last when it has more than one line. Pure."""
    if not report.lines:
        return [f"no job finished since {_when(report.since)}"]
    rows = [_summary_row(u) for u in report.lines]
    if len(report.lines) > 1:
        rows.append(_summary_row(report.total, user=""))
    return [_row(SUMMARY + READINGS, [c for c, _, _ in SUMMARY + READINGS]), *rows]


def job_lines(report: UsageReport) -> list[str]:
    """`gpuctl usage --jobs`: a line per job, the latest finished first. Pure."""
    if not report.jobs:
        return [f"no job finished since {_when(report.since)}"]
    lines = [_row(JOBS + READINGS, [c for c, _, _ in JOBS + READINGS])]
    lines += [_row(JOBS + READINGS, _job_cells(j)) for j in report.jobs]
    if report.jobs_left_out:
        lines.append(
            f"... and {report.jobs_left_out} more finished jobs (narrow with --since, --project or --user)"
        )
    return lines


def _summary_row(line: UsageLine, user: str | None = None) -> str:
    """`user`: what its user column says, if not the line's user (`-` for none recorded)."""
    cells = [line.project, line.user or "-" if user is None else user, str(line.jobs), _hours(line.gpu_hours)]
    return _row(SUMMARY + READINGS, cells + _readings(line.utilization_pct, line.peak_memory_mib))


def _job_cells(job: JobUsage) -> list[str]:
    cells = [job.id, job.name, job.project, job.user or "-", job.state, _elapsed(job.elapsed_s)]
    cells += [str(job.gpus), _hours(job.gpu_hours)]
    return cells + _readings(job.utilization_pct, job.peak_memory_mib)


def _readings(utilization_pct: float | None, peak_memory_mib: int | None) -> list[str]:
    utilization = "-" if utilization_pct is None else f"{utilization_pct:.0f}%"
    return [utilization, "-" if peak_memory_mib is None else _peak(peak_memory_mib)]


def _peak(mib: int) -> str:
    """Peak memory within the column's six characters, in format_mib's units: a reading is rarely a whole
    number of GB (68562 MiB was `68562MB`, cut to `68562~`), so 67.0GB, 141GB, 1.5TB."""
    gib = mib / 1024
    if gib < 99.95:
        return f"{gib:.1f}GB"
    return f"{gib:.0f}GB" if gib < 999.5 else f"{gib / 1024:.1f}TB"


def _row(columns: tuple[tuple[str, int, str], ...], cells: list[str]) -> str:
    """Each cell cleaned and cut to its column's width (a cut one ends in `~`), aligned as the column says."""
    from cli.text import clean

    out = []
    for (_, width, align), cell in zip(columns, cells, strict=True):
        text = clean(cell)
        text = text if len(text) <= width else text[: width - 1] + "~"
        out.append(f"{text:{align}{width}}")
    return " ".join(out).rstrip()


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if hours < 1000 else f"{hours:.0f}"


def _elapsed(seconds: float) -> str:
    """Its two largest units: `1d2h`, `3h5m`, `12m30s`, `45s`."""
    from shared.units import format_duration_s

    return "".join(re.findall(r"\d+[dhms]", format_duration_s(int(seconds)))[:2])


def _when(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
