"""Wall time of one `gpuctl` call, Python start-up included, as a user's shell sees it:

    python -m bench.cli_calls [--runs N]

starts `gpuctl dev` (a coordinator and an agent with simulated GPUs, state in a temporary folder) and times
`gpuctl submit -d -f SPEC`, `gpuctl ps` and `gpuctl --version`, each run N times as a subprocess. Prints the
median, the 90th percentile and the best run of each, in ms. `measure()` is the part other benches call with
a coordinator of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.cli_startup import timings_ms

SPEC = "name: bench-cli\ncommands: ['true']\nresources: {gpu: 1}\n"
DEV_START_TIMEOUT_S = 60.0


def gpuctl_command() -> str:
    """The console script installed beside this Python (what a user runs), else the one on PATH."""
    beside = Path(sys.executable).parent / "gpuctl"
    found = str(beside) if beside.exists() else shutil.which("gpuctl")
    if found is None:
        raise SystemExit("no `gpuctl` console script: pip install -e .")
    return found


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    p90 = ordered[max(0, math.ceil(len(ordered) * 0.9) - 1)]  # nearest rank
    return {"median_ms": statistics.median(ordered), "p90_ms": p90, "best_ms": ordered[0]}


def measure(env: dict[str, str], spec_path: Path, runs: int = 20) -> dict[str, dict[str, float]]:
    """Time `gpuctl submit -d -f SPEC`, `gpuctl ps` and `gpuctl --version`, `runs` calls each, with `env`
    laid over this process's environment (GPUCTL_CONFIG: the CLI config naming the coordinator and its
    token). Each submit adds a job; the coordinator must accept them. Raises CalledProcessError if a call
    fails."""
    gpuctl, full_env = gpuctl_command(), {**os.environ, **env}
    commands = {
        "submit -d": [gpuctl, "submit", "-d", "-f", str(spec_path)],
        "ps": [gpuctl, "ps"],
        "--version": [gpuctl, "--version"],
    }
    return {name: summary(timings_ms(command, runs, full_env)) for name, command in commands.items()}


@contextlib.contextmanager
def dev_coordinator(root: Path) -> Iterator[dict[str, str]]:
    """`gpuctl dev` in a child process with its state under `root`; yields the env that points the CLI at
    it, once its agent is ready (so that the jobs submitted run, and `ps` lists a short queue)."""
    env = {"GPUCTL_CONFIG": str(root / "cli.yaml")}
    full_env = {**os.environ, **env}
    state = root / "dev"
    command = [gpuctl_command(), "dev", "--simulate-gpus", "8xH100:80GB", "--port", "0"]
    log = (root / "dev.log").open("wb")
    child = subprocess.Popen(
        [*command, "--state-dir", str(state)], env=full_env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + DEV_START_TIMEOUT_S
        hosts = [gpuctl_command(), "hosts", "--json"]
        while '"ready"' not in subprocess.run(hosts, env=full_env, capture_output=True, text=True).stdout:
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gpuctl dev did not start:\n{(root / 'dev.log').read_text()}")
            time.sleep(0.2)
        yield env
    finally:
        stop_group(child)
        log.close()


def stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's whole process group (it leads one: its agent's jobs are in it too), then
    SIGKILL to what is left after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpuctl-bench-cli-"))
    root.chmod(0o755)  # the agent's unprivileged job user must reach the jobs' folders
    try:
        spec = root / "job.yaml"
        spec.write_text(SPEC)
        with dev_coordinator(root) as env:
            figures = measure(env, spec, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'command':19} {'median':>9} {'p90':>9} {'best':>9}   ({args.runs} runs each)")
    for name, row in figures.items():
        print(f"gpuctl {name:12} {row['median_ms']:6.1f} ms {row['p90_ms']:6.1f} ms {row['best_ms']:6.1f} ms")


if __name__ == "__main__":
    main()
