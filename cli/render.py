"""Tables and short texts for people; `--json` output bypasses all of this."""

from __future__ import annotations

import re
import time

from rich.console import Console, RenderableType
from rich.table import Table

from coordinator.scheduler import describe_gpus, describe_request
from shared.wire import HostView, JobView


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    seconds = max(0, int((now or time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def job_status(job: JobView) -> str:
    if job.stop_requested and job.status in ("assigned", "pulling", "running"):
        return "stopping"
    if job.status in ("done", "failed") and job.exit_code is not None:
        return f"{job.status} ({job.exit_code})"
    return job.status


PROGRESS_BAR_CHARS = 20


def waiting_line(job: JobView) -> str:
    """What `submit` prints while a job waits: its pending reason, or its image pull as a progress bar
    (`pulling nvcr.io/nvidia/pytorch:24.08-py3 [#######.............] 35%`)."""
    if job.status != "pulling":
        return f"{job.status}: {job.reason}"
    image = job.spec.image or "image"
    match = re.fullmatch(r"pulling (\d+)%", job.reason)
    if not match:
        return f"pulling {image}"
    percent = min(100, int(match.group(1)))
    done = percent * PROGRESS_BAR_CHARS // 100
    return f"pulling {image} [{'#' * done}{'.' * (PROGRESS_BAR_CHARS - done)}] {percent}%"


def jobs_table(jobs: list[JobView]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "STATUS", "HOST", "GPU", "SUBMITTED", "REASON"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        gpus = ",".join(map(str, job.gpus)) if job.gpus else describe_request(job.spec.resources.gpu)
        table.add_row(
            job.id, job.name, job_status(job), job.host or "-", gpus, ago(job.submitted_at), job.reason or ""
        )
    return table


def hosts_table(hosts: list[HostView]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "STATUS", "RESOURCES", "BLOCKS", "LAST SEEN", "WARNINGS"):
        table.add_column(column, overflow="fold")
    for host in hosts:
        inv = host.inventory
        resources = "-"
        if inv is not None:
            resources = f"{describe_gpus(inv)}, {inv.cpu_count} CPU, {inv.memory_mib // 1024}GB"
            if inv.simulated:
                resources += " [SIMULATED]"
        warnings = "; ".join(host.warnings + (inv.warnings if inv else ()))
        table.add_row(
            host.name,
            host.status,
            resources,
            f"{host.busy_blocks}/{host.total_blocks} busy",
            ago(host.last_seen),
            warnings,
        )
    return table


def print_table(table: RenderableType) -> None:
    Console(soft_wrap=False, width=200).print(table)
