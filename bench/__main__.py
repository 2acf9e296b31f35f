"""The bench: `python -m bench [--only a,c] [--quick] [--json PATH]` (or `bench/run`).

Sections: (a) the scheduler alone, (b) a simulated fleet, (c) end to end on real processes, (d) the same
workload on a one-node Slurm, (e) the CLI's wall time per call beside sbatch and squeue, (f) port-forward
through the agent's channel beside a direct connection. Each prints its
table as it ends; the gpuctl/Slurm ratio comes last, and everything goes to one JSON file. A section whose
module is not there, or whose tools are missing, shows as "not run" with the reason; one that fails shows
its error in one line and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from bench.report import table

SECTIONS = {
    "a": "scheduler alone",
    "b": "simulated fleet",
    "c": "end to end, plain processes",
    "d": "Slurm, one node of 8 GPU GRES",
    "e": "CLI wall time per call",
    "f": "port-forward through the channel",
}


@dataclass(frozen=True)
class Counts:
    """How much each section does: the full run fits in ten minutes on two cores, --quick in about two."""

    array_jobs: int  # (c): one array per cluster
    loop_jobs: int  # (c): `gpuctl submit -d` calls per shell loop
    slurm_jobs: int  # (d): for the loop and for the array
    many_hosts: int  # (c): the second cluster
    fleet_sizes: tuple[int, ...]  # (b)
    cli_runs: int  # (e): calls of each command


FULL = Counts(1000, 200, 200, 100, (1000, 5000, 10000), 20)
QUICK = Counts(200, 50, 50, 100, (1000,), 5)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default="abcdef", type=_sections, help="sections to run, e.g. a,c (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer jobs and sizes: a smoke run of every section"
    )
    parser.add_argument(
        "--json", type=Path, default=Path("bench-results.json"), help="where to write the results"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="(b) and (c) again on a temporary PostgreSQL, their figures as pg_ columns (bench/databases.py)",
    )
    parser.add_argument("--loop-jobs", type=_positive, help="(c) jobs per shell loop (full: 200, quick: 50)")
    parser.add_argument("--array-jobs", type=_positive, help="(c) jobs per array (full: 1000, quick: 200)")
    parser.add_argument(
        "--slurm-jobs", type=_positive, help="(d) jobs per loop and array (full: 200, quick: 50)"
    )
    return parser.parse_args(argv)


def _sections(text: str) -> str:
    chosen = text.replace(",", "").replace(" ", "").lower()
    unknown = sorted(set(chosen) - set(SECTIONS))
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {unknown[0] if unknown else '(none)'!r}; known: a-f"
        )
    return "".join(s for s in SECTIONS if s in chosen)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def counts_for(args: argparse.Namespace) -> Counts:
    base = QUICK if args.quick else FULL
    return Counts(
        args.array_jobs or base.array_jobs,
        args.loop_jobs or base.loop_jobs,
        args.slurm_jobs or base.slurm_jobs,
        base.many_hosts,
        base.fleet_sizes,
        base.cli_runs,
    )


def section_runners(
    quick: bool, counts: Counts, postgres: bool = False
) -> dict[str, Callable[[], dict[str, object]]]:
    """Each section as a call that returns its dict with "rows"; imports happen inside, so that a section
    whose module is missing costs only its own line."""

    def scheduler() -> dict[str, object]:
        return _module("bench.scheduler").run(quick=quick)

    def fleet() -> dict[str, object]:
        module = _module("bench.fleet")
        result: dict[str, object] = module.run(sizes=counts.fleet_sizes)
        if postgres:
            from bench.databases import FLEET_COLUMNS, postgres_databases, with_postgres_column

            with postgres_databases() as database:
                on_postgres = module.run(sizes=counts.fleet_sizes, database=database)
            result["rows"] = with_postgres_column(
                result["rows"], on_postgres["rows"], "agents", FLEET_COLUMNS
            )
        rows = result.get("rows")
        result["shown"] = [fleet_row(r) for r in rows] if isinstance(rows, list) else []
        return result

    def e2e() -> dict[str, object]:
        from bench import e2e

        result = e2e.run(counts.array_jobs, counts.loop_jobs, counts.many_hosts)
        if postgres:
            from bench.databases import postgres_databases, shown, with_postgres_column

            with postgres_databases() as database:
                on_postgres = e2e.run(counts.array_jobs, counts.loop_jobs, counts.many_hosts, database)
            result["rows"] = with_postgres_column(result["rows"], on_postgres["rows"])
            result["shown"] = shown(result["rows"])
        return result

    def slurm() -> dict[str, object]:
        from bench import slurm

        if reason := slurm.missing():
            raise NotRun(reason)
        return slurm.run(counts.slurm_jobs, counts.slurm_jobs)

    def cli() -> dict[str, object]:
        from bench.cli_side import run

        return run(counts.cli_runs)

    def port_forward() -> dict[str, object]:
        from bench import port_forward

        return port_forward.run(quick)

    return {"a": scheduler, "b": fleet, "c": e2e, "d": slurm, "e": cli, "f": port_forward}


class NotRun(Exception):
    """A section that cannot run here; its message says why, in a few words, starting with "not run"."""


def _module(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise NotRun(f"not run: no {name}") from None
        raise


def run_section(runner: Callable[[], dict[str, object]]) -> dict[str, object]:
    """The section's result, with its wall time and the machine's load as it ended (the machine may be
    shared: the load says how far to trust the figures); on failure, what went wrong in one line."""
    started = time.monotonic()
    try:
        result = runner()
    except NotRun as exc:
        result = {"status": str(exc), "rows": []}
    except Exception as exc:  # one section's failure must not cost the others their figures
        traceback.print_exc()
        result = {"status": f"failed: {type(exc).__name__}: {exc}".splitlines()[0], "rows": []}
    result.setdefault("status", "ok")
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["load_avg_1m"] = os.getloadavg()[0]
    return result


def ratio_rows(results: dict[str, dict[str, object]]) -> list[dict[str, object]]:
    """gpuctl's jobs/s over Slurm's for each workload that both ran on one host."""

    def by_run(key: str) -> dict[str, dict[str, object]]:
        rows = results.get(key, {}).get("rows", [])
        return {str(r["run"]).split(" ", 1)[1]: r for r in rows if isinstance(r, dict)}

    gpuctl, slurm = by_run("c"), by_run("d")
    out = []
    for workload in ("1 host, loop", "1 host, array"):
        ours, theirs = gpuctl.get(workload, {}).get("jobs_per_s"), slurm.get(workload, {}).get("jobs_per_s")
        if isinstance(ours, float) and isinstance(theirs, float) and theirs > 0:
            out.append(
                {
                    "workload": workload,
                    "gpuctl_jobs_per_s": ours,
                    "slurm_jobs_per_s": theirs,
                    "gpuctl/slurm": ours / theirs,
                }
            )
    return out


def fleet_row(row: dict[str, object]) -> dict[str, object]:
    """The figures of one fleet size that fit 80 columns (the JSON keeps them all): syncs answered without
    waiting, p50/p99; heartbeats/s; the coordinator's CPU share and peak RSS; on PostgreSQL too if run."""
    names = {
        "agents": "agents",
        "up": "up",
        "bringup_s": "up_s",
        "sync_p50_ms": "p50_ms",
        "sync_p99_ms": "p99_ms",
        "heartbeats_per_s": "beats/s",
        "coordinator_cpu": "coord_cpu",
        "coordinator_peak_rss_mib": "rss_mib",
    }
    if "pg_sync_p50_ms" in row:  # PostgreSQL's beside (--postgres), in place of the bring-up's figures
        del names["bringup_s"], names["heartbeats_per_s"]
        names |= {"pg_sync_p50_ms": "pg_p50", "pg_sync_p99_ms": "pg_p99", "pg_coordinator_cpu": "pg_cpu"}
    return {short: row.get(name) for name, short in names.items()}


def section_lines(key: str, result: dict[str, object]) -> list[str]:
    title = f"({key}) {SECTIONS[key]}" if key in SECTIONS else key
    if "wall_s" in result:
        title += f" [{result['wall_s']:.0f} s, load {result['load_avg_1m']:.1f}]"
    head = f"{title}: {result['status']}" if result.get("status", "ok") != "ok" else title
    rows = result.get("shown") or result.get("rows") or []
    assert isinstance(rows, list)
    return [head, *table(rows), ""]


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so every section stops what it started


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    counts = counts_for(args)
    runners = section_runners(args.quick, counts, args.postgres)
    info = machine()
    report: dict[str, object] = {"started_at": time.time(), "machine": info, "counts": asdict(counts)}
    results: dict[str, dict[str, object]] = {}
    print(
        f"gpuctl bench{' (quick)' if args.quick else ''}: {info['cpus']} CPUs, load {info['load_avg_1m']:.2f}, "
        f"Python {info['python']}\n",
        flush=True,
    )
    try:
        for key in args.only:
            print(f"running ({key}) {SECTIONS[key]} ...", file=sys.stderr, flush=True)
            results[key] = run_section(runners[key])
            print("\n".join(section_lines(key, results[key])), flush=True)
    except KeyboardInterrupt:  # what was started is stopped by now; keep what was measured
        report["interrupted"] = True
        print("interrupted", file=sys.stderr)
    ratios = ratio_rows(results)
    if ratios:
        print("\n".join(section_lines("gpuctl/Slurm, jobs completed per second", {"rows": ratios})))
    report.update(sections=results, ratio=ratios, wall_s=round(time.time() - float(report["started_at"]), 1))
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.json}")
    return 130 if report.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
