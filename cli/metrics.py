"""`gpuctl metrics JOB` (a job's GPUs, like `dstack metrics`) and `gpuctl top` (the fleet, one line per host):
the agents' latest device readings, redrawn every REFRESH_S until Ctrl-C; printed once with `--once`, `--json`,
or when stdout is not a terminal. Both fit 80 columns."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

    from shared.wire import GpuMetrics, HostReadings, HostView, JobMetricsView

REFRESH_S = 2.0
GIB = 1024  # MiB


@click.command("metrics")
@click.option(
    "--once", is_flag=True, help="Print the readings once and exit (the default when not a terminal)."
)
@click.option("--json", "as_json", is_flag=True, help="The job's GPUs and their samples, once, as JSON.")
@click.argument("job")
def metrics_command(once: bool, as_json: bool, job: str) -> None:
    """Show a job's GPUs live: utilization, memory, temperature, power, SM clock and ECC errors of each,
    as its hosts' agents last read them (every `metrics_interval` of the coordinator, 10 s by default)."""
    from cli.session import call

    if as_json:
        import msgspec

        click.echo(msgspec.json.encode(call(lambda client: client.job_metrics(job))).decode())
        return
    _show(lambda: job_table(call(lambda client: client.job_metrics(job)), time.time()), once)


@click.command("top")
@click.option("--once", is_flag=True, help="Print the fleet once and exit (the default when not a terminal).")
@click.option(
    "--json", "as_json", is_flag=True, help="Every host's latest readings, summed up, once, as JSON."
)
def top_command(once: bool, as_json: bool) -> None:
    """Show the fleet live, one line per host: its GPUs, busy blocks, mean utilization, memory used of all,
    the hottest GPU, the power drawn, and its unhealthy GPUs."""
    from cli.session import call

    if as_json:
        import msgspec

        click.echo(msgspec.json.encode(call(lambda client: client.fleet_readings())).decode())
        return
    _show(lambda: fleet_table(*call(lambda client: (client.hosts(), client.fleet_readings()))), once)


def _show(draw: Callable[[], RenderableType], once: bool) -> None:
    """Print `draw()` once, or redraw it in place every REFRESH_S until Ctrl-C."""
    from rich.live import Live

    from cli.render import print_table, terminal

    if once or not sys.stdout.isatty():
        print_table(draw())
        return
    try:
        with Live(draw(), console=terminal(), auto_refresh=False) as live:
            while True:
                time.sleep(REFRESH_S)
                live.update(draw(), refresh=True)
    except KeyboardInterrupt:
        return


def job_table(view: JobMetricsView, now: float) -> RenderableType:
    """The job's line, then one row per GPU: its latest sample (a dash for what was not read)."""
    from rich.console import Group
    from rich.text import Text

    from cli.render import plain

    multi = len({series.node for series in view.gpus}) > 1
    table = _table(*("NODE",) * multi, "HOST", "GPU", "UTIL", "MEM GiB", "TEMP", "POWER", "SM MHz", "ECC")
    latest_at = []
    for series in view.gpus:
        sample = series.samples[-1] if series.samples else None
        if sample is not None:
            latest_at.append(sample.at)
        cells = reading_cells(sample.reading if sample else None)
        table.add_row(*(str(series.node),) * multi, plain(series.host), str(series.gpu), *cells)
    read = f"read {_age(now - max(latest_at))} ago" if latest_at else "no readings yet"
    what = f"{len(view.gpus)} GPU{'s' * (len(view.gpus) != 1)}; {read}" if view.gpus else "holds no GPU now"
    heading = Text(f"job {view.job_id} ({view.name}) {view.status}: ", style="bold") + plain(what)
    return Group(heading, table) if view.gpus else heading


def reading_cells(r: GpuMetrics | None) -> list[str]:
    """UTIL, MEM GiB (used/total), TEMP, POWER, SM MHz and ECC (corrected/uncorrected) of one reading. Pure."""
    if r is None:
        return ["-"] * 6
    return [
        _unit(r.utilization_pct, "%"),
        _memory(r.memory_used_mib, r.memory_total_mib, decimals=1),
        _unit(r.temperature_c, "C"),
        _watts(r.power_w),
        _unit(r.sm_clock_mhz, ""),
        "-"
        if r.ecc_corrected is None and r.ecc_uncorrected is None
        else f"{_n(r.ecc_corrected)}/{_n(r.ecc_uncorrected)}",
    ]


def fleet_table(hosts: list[HostView], readings: list[HostReadings]) -> Table:
    """`gpuctl top`: one row per host, as `gpuctl hosts` lists them; one unreachable (its lease ran out) or
    removed shows no readings, and says so after its name."""
    from cli.render import plain

    table = _table("HOST", "GPUS", "BUSY", "UTIL", "MEM GiB", "TEMP", "POWER", "UNHEALTHY")
    by_host = {summary.host: summary for summary in readings}
    for host in sorted(hosts, key=lambda h: h.name):
        live = host.status in ("ready", "draining")
        table.add_row(
            plain(host.name + ("" if live else f" ({host.status})")),
            str(len(host.inventory.gpus) if host.inventory else 0),
            f"{host.busy_blocks}/{host.total_blocks}",
            *host_cells(by_host.get(host.name) if live else None),
            str(len(host.unhealthy)) if host.unhealthy else "-",
        )
    return table


def host_cells(r: HostReadings | None) -> list[str]:
    """A host's UTIL (mean), MEM GiB (used/all), TEMP (the hottest) and POWER (the sum). Pure."""
    if r is None:
        return ["-"] * 4
    return [
        _unit(r.utilization_pct, "%"),
        _memory(r.memory_used_mib, r.memory_total_mib, decimals=0),
        _unit(r.temperature_c, "C"),
        _watts(r.power_w),
    ]


def _table(*columns: str) -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column != "HOST", overflow="fold")
    return table


def _unit(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def _n(count: int | None) -> str:
    return "-" if count is None else str(count)


def _memory(used_mib: int | None, total_mib: int | None, decimals: int) -> str:
    """`61.2/80.0` (GiB); `61.2` without a total; `-` without a use."""
    if used_mib is None:
        return "-"
    used = f"{used_mib / GIB:.{decimals}f}"
    return f"{used}/{total_mib / GIB:.{decimals}f}" if total_mib else used


def _watts(watts: float | None) -> str:
    if watts is None:
        return "-"
    return f"{watts / 1000:.1f}kW" if watts >= 1000 else f"{watts:.0f}W"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
