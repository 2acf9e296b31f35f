"""(e) The CLI's wall time per call, Python start-up included, beside Slurm's sbatch and squeue.

gpuctl's side is `bench.cli_calls.measure` against a one-host cluster of real processes; Slurm's is
`bench.slurm.call_times` against the bench's own one-node Slurm. Either side that cannot run here says why.
"""

from __future__ import annotations

import importlib

from bench import slurm
from bench.cluster import gpuctl_cluster


def run(runs: int) -> dict[str, object]:
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    try:
        cli_calls = importlib.import_module("bench.cli_calls")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.cli_calls":
            raise
        notes.append("gpuctl: not run: no bench.cli_calls")
    else:
        with gpuctl_cluster(1) as cluster:
            measured = cli_calls.measure(cluster.env, cluster.spec_path, runs=runs)
        rows += [{"command": name, **figures} for name, figures in measured.items()]
    if reason := slurm.missing():
        notes.append(f"slurm: {reason}")
    else:
        rows += [{"command": name, **figures} for name, figures in slurm.call_times(runs).items()]
    result: dict[str, object] = {"rows": rows, "runs": runs}
    if notes:
        result["status"] = "; ".join(notes)
    return result
