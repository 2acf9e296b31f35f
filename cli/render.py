"""Tables and short texts for people, drawn by rich; `--json` output bypasses all of this."""

from __future__ import annotations

import os

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from cli.text import clean, schedule_line, with_start
from shared.describe import ago, describe_gpus, describe_request, describe_unhealthy, index_ranges, job_status
from shared.wire import ArraySummary, HostView, JobView, QueueEntry

PIPE_WIDTH = 200  # output that goes to a pipe or a file, without COLUMNS, is not folded to a made-up width


def plain(text: str) -> Text:
    """A table cell or line of user-supplied text: cleaned, and never read as rich markup (`[/]` is text)."""
    return Text(clean(text))


def terminal() -> Console:
    """The terminal's width (rich reads the terminal, or COLUMNS); output to a pipe keeps whole lines."""
    console = Console(soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        return Console(soft_wrap=False, width=PIPE_WIDTH)
    return console


def _table(*columns: str, whole: tuple[str, ...]) -> Table:
    """Columns named in `whole` (ids, states, times: short, and read or copied whole) never wrap; the others
    wrap at spaces, and fold a word longer than the column, so the table fits the terminal's width."""
    table = Table(box=None, header_style="bold")
    for column in columns:
        if column in whole:
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, overflow="fold")
    return table


def jobs_table(jobs: list[JobView], coordinator_url: str = "") -> Table:
    """`gpuctl ps`: a service (an array of replicas) says its URL, on `coordinator_url`, after its counts."""
    table = _table(
        "ID",
        "NAME",
        "STATUS",
        "ATTEMPT",
        "HOST",
        "GPU",
        "SUBMITTED",
        "REASON",
        whole=("ID", "STATUS", "ATTEMPT", "SUBMITTED"),
    )
    for job in jobs:
        gpus = index_ranges(job.gpus) if job.gpus else describe_request(job.spec.resources.gpu)
        reason = with_start(job.reason or "", job.estimated_start)
        if job.array is not None:  # the counts say more than any one task's reason
            reason = array_counts(job.array)
        if job.service_path:
            reason = f"{reason}; {coordinator_url.rstrip('/')}{job.service_path}"
        if job.schedule is not None:
            reason = schedule_line(job.schedule)
        table.add_row(
            job.id,
            plain(job.name),
            job_status(job),
            str(job.attempt) if job.attempt else "-",
            plain(job.host or "-"),
            plain(gpus),
            ago(job.submitted_at),
            plain(reason),
        )
    return table


def queue_table(entries: list[QueueEntry], now: float | None = None) -> Table:
    """`gpuctl queue`: the waiting jobs in the scheduler's order, with what orders them (priority, then
    fair share, then age) and why each waits; the reason wraps, so 80 columns stay readable."""
    table = _table(
        "#",
        "ID",
        "NAME",
        "PROJECT",
        "PRIO",
        "SHARE",
        "AGE",
        "REASON",
        whole=("#", "ID", "PRIO", "SHARE", "AGE"),
    )
    for position, entry in enumerate(entries, 1):
        table.add_row(
            str(position),
            entry.id,
            plain(entry.name),
            plain(entry.project),
            str(entry.priority),
            f"{entry.fair_share:.2f}",
            ago(entry.submitted_at, now).removesuffix(" ago"),
            plain(with_start(entry.reason, entry.estimated_start)),
        )
    return table


# The order in which an array's counts are said: what ended, then what runs, then what waits.
_COUNT_ORDER = ("done", "failed", "stopped", "lost", "running", "pulling", "assigned", "retrying", "pending")


def array_counts(array: ArraySummary) -> str:
    """`812 done, 150 running, 38 pending`, with the array's limit when it has one. Pure."""
    counts = dict(array.counts)
    counts["pending"] = counts.get("pending", 0) + counts.pop("submitted", 0)
    words = [f"{counts[status]} {status}" for status in _COUNT_ORDER if counts.get(status)]
    words += [f"{n} {status}" for status, n in sorted(counts.items()) if n and status not in _COUNT_ORDER]
    limit = f" (at most {array.task_limit} at once)" if array.task_limit else ""
    return ", ".join(words) + limit


def tasks_table(array: JobView, tasks: list[JobView]) -> Table:
    """`gpuctl ps ARRAY`: its tasks, one row each, under a title with the array's counts."""
    table = jobs_table(tasks)
    if array.array is not None:
        table.title = f"{clean(array.name)}: {array_counts(array.array)}"
    return table


MAX_ATTEMPTS_SHOWN = 20


def attempts_table(job: JobView, most: int = MAX_ATTEMPTS_SHOWN) -> Table:
    """`gpuctl ps -a JOB`: the job's latest `most` attempts, with their host, times and how they ended; a
    caption counts the earlier ones (`--json` lists them all)."""
    table = _table(
        "ATTEMPT",
        "ALLOCATION",
        "HOST",
        "STATUS",
        "PLACED",
        "STARTED",
        "FINISHED",
        "REASON",
        whole=("ATTEMPT", "ALLOCATION", "STATUS", "PLACED", "STARTED", "FINISHED"),
    )
    earlier = max(0, len(job.attempts) - most)
    if earlier:
        table.caption = f"{earlier} earlier attempts not shown; --json lists them all"
    for a in job.attempts[earlier:]:
        status = f"{a.status} ({a.exit_code})" if a.exit_code is not None else a.status
        table.add_row(
            str(a.attempt),
            a.allocation_id,
            plain(a.host),
            status,
            ago(a.placed_at),
            ago(a.started_at),
            ago(a.finished_at),
            plain(a.reason),
        )
    return table


def hosts_table(hosts: list[HostView]) -> Table:
    table = _table(
        "NAME",
        "STATUS",
        "RESOURCES",
        "BLOCKS",
        "LAST SEEN",
        "WARNINGS",
        whole=("STATUS", "BLOCKS", "LAST SEEN"),
    )
    for host in hosts:
        inv = host.inventory
        resources = "-"
        if inv is not None:
            resources = f"{describe_gpus(inv)}, {inv.cpu_count} CPU, {inv.memory_mib // 1024}GB"
            if inv.simulated:
                resources += " [SIMULATED]"
        warnings = "; ".join(link_lines(host) + host.warnings + (inv.warnings if inv else ()))
        table.add_row(
            plain(host.name),
            host.status,
            plain(resources),
            f"{host.busy_blocks}/{host.total_blocks} busy",
            ago(host.last_seen),
            plain(warnings),
        )
    return table


def health_lines(hosts: list[HostView]) -> list[str]:
    """One line under the hosts table per host with unhealthy GPUs: a line of its own, so that no column
    cuts why (`h1: 1 GPU unhealthy: XID 79 (fallen off the bus); ...`)."""
    return [
        f"{h.name}: {describe_unhealthy(h.unhealthy)}; its blocks take no new work until "
        f"`gpuctl hosts undrain {h.name}`"
        for h in hosts
        if h.unhealthy
    ]


def link_lines(host: HostView) -> tuple[str, ...]:
    """The host's last proxy or tunnel failure, as the reason it is unreachable or as a recent event."""
    if not host.link_error:
        return ()
    if host.status == "unreachable":
        return (f"unreachable: {host.link_error}",)
    return (f"link failed {ago(host.link_error_at)}: {host.link_error}",)


def print_table(table: RenderableType) -> None:
    terminal().print(table)
