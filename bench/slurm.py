"""(d) The same trivial jobs on Slurm, side by side: a one-node Slurm from Debian's slurm-wlm (bench/setup
installs it) started here in a temporary folder, on loopback, with default scheduler settings.

The node declares 8 GPU GRES backed by fake device files (character devices with /dev/null's numbers: Slurm
22.05 reports a `gpu` GRES without `File=` as count 0 and drains the node), and 64 CPUs with
`SlurmdParameters=config_overrides` so that eight one-GPU jobs fit on a two-core machine as on a real GPU
host. munged runs with a key of its own. Without slurmdbd there is no `sacct`: `jobcomp/filetxt` records each job's end
and state, and slurmctld's log (to the millisecond) when it accepted each submission and allocated each job. Every daemon is stopped on the way out, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.cluster import free_port, spawn, stop
from bench.e2e import POLL_S, Workload
from bench.report import summary_ms

GPUS = 8
NODE = "bench"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")


@dataclass
class Slurm:
    root: Path
    env: dict[str, str]  # SLURM_CONF for the client commands
    jobcomp: Path


def missing() -> str | None:
    """Why Slurm cannot run here, in a few words, or None."""
    if os.geteuid() != 0:
        return "not run: needs root (slurmd runs as root)"
    absent = [d for d in COMMANDS if shutil.which(d) is None]
    if absent:
        return f"not run: no {absent[0]} (run bench/setup)"
    return None


def run(loop_jobs: int, array_jobs: int) -> dict[str, object]:
    """A shell loop of `loop_jobs` sbatch calls, then one array of `array_jobs`, on one node of 8 GPUs."""
    with slurm_cluster() as slurm:
        rows = [
            shell_loop(slurm, loop_jobs).row(),
            array(slurm, array_jobs).row(),
        ]
    return {"rows": rows}


def call_times(runs: int) -> dict[str, dict[str, float]]:
    """(e)'s Slurm side: the wall time of one `sbatch` (a trivial job) and one `squeue`, per call."""
    with slurm_cluster() as slurm:
        out = {}
        for name, command in (("sbatch", _sbatch(slurm)), ("squeue", ["squeue"])):
            subprocess.run(command, env=slurm.env, check=True, capture_output=True)  # warm the page cache
            seconds = []
            for _ in range(runs):
                started = time.perf_counter()
                subprocess.run(command, env=slurm.env, check=True, capture_output=True)
                seconds.append(time.perf_counter() - started)
            out[name] = summary_ms(seconds)
        return out


def shell_loop(slurm: Slurm, n: int) -> Workload:
    script = 'for i in $(seq "$1"); do "${@:2}" || exit 1; done'
    return _measure(slurm, n, "slurm 1 host, loop", ["bash", "-c", script, "loop", str(n), *_sbatch(slurm)])


def array(slurm: Slurm, n: int) -> Workload:
    return _measure(slurm, n, "slurm 1 host, array", [*_sbatch(slurm), f"--array=1-{n}"])


def _sbatch(slurm: Slurm) -> list[str]:
    return ["sbatch", "-Q", "--gres=gpu:1", "-o", "/dev/null", f"--chdir={slurm.root}", "--wrap", "true"]


def _measure(slurm: Slurm, n: int, label: str, command: list[str]) -> Workload:
    before = len(_records(slurm.jobcomp))
    started = time.time()
    subprocess.run(command, env=slurm.env, check=True, stdout=subprocess.DEVNULL)
    submit_s = time.time() - started
    deadline = time.monotonic() + 120 + 2 * n
    while len(records := _records(slurm.jobcomp)) < before + n:  # a file read: no load on slurmctld
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} Slurm jobs not done after {120 + 2 * n} s")
        time.sleep(POLL_S / 5)
    span_s = time.time() - started  # the moment the last record appeared (to POLL_S / 5)
    jobs = records[before:]
    submitted, allocated = ctld_times((slurm.root / "slurmctld.log").read_text(errors="replace"))
    latencies = [latency_s(r, submitted, allocated) for r in jobs]
    failed = sum(r["JobState"] != "COMPLETED" for r in jobs)
    return Workload(label, n, submit_s, latencies, span_s, failed)


def _records(path: Path) -> list[dict[str, str]]:
    try:
        return parse_jobcomp(path.read_text())
    except FileNotFoundError:
        return []


def parse_jobcomp(text: str) -> list[dict[str, str]]:
    """jobcomp/filetxt's lines as dicts (`Key=Value` pairs, blank-separated), one per ended job."""
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.startswith("JobId=")]


_SUBMIT = re.compile(r"^\[([\d\-T:.]+)\] _slurm_rpc_submit_batch_job: JobId=(\d+) ", re.M)
# `JobId=7` for a job, `JobId=4_2(6)` for task 2 of array 4 (its own id 6); the backfill pass says Started
_ALLOCATE = re.compile(
    r"^\[([\d\-T:.]+)\] sched\S*:.*(?:Allocate|Started) JobId=(\d+)(?:_\d+\((\d+)\))?", re.M
)


def ctld_times(log_text: str) -> tuple[dict[str, float], dict[str, float]]:
    """When slurmctld accepted each submission and allocated each job, to the millisecond, from its log
    (jobcomp's times are whole seconds), by job id. Allocation precedes the job's start on the node by a
    few ms."""
    submitted = {m[2]: _time(m[1]) for m in _SUBMIT.finditer(log_text)}
    allocated = {m[3] or m[2]: _time(m[1]) for m in _ALLOCATE.finditer(log_text)}
    return submitted, allocated


def latency_s(record: dict[str, str], submitted: dict[str, float], allocated: dict[str, float]) -> float:
    """Submit-to-running of one job: from slurmctld's log, else (a line it did not write) jobcomp's seconds."""
    own, base = record["JobId"], record.get("ArrayJobId", record["JobId"])
    if own in allocated and base in submitted:
        return allocated[own] - submitted[base]
    return _time(record["StartTime"] + ".0") - _time(record["SubmitTime"] + ".0")


def _time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").timestamp()


@contextlib.contextmanager
def slurm_cluster() -> Iterator[Slurm]:
    """munged, slurmctld and slurmd in a temporary folder; yields once the node is idle; stops all."""
    root = Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    root.chmod(0o755)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        _write_config(root)
        daemons.append(_munged(root))
        _wait_for(lambda: (root / "munge" / "munge.sock").exists(), "munged's socket", root)
        daemons.append(spawn(["slurmctld", "-D", "-f", str(root / "slurm.conf")], root / "slurmctld.out"))
        daemons.append(
            spawn(["slurmd", "-D", "-f", str(root / "slurm.conf"), "-N", NODE], root / "slurmd.out")
        )
        _wait_for(lambda: _node_state(env) == "idle", f"node {NODE} idle", root, daemons)
        yield Slurm(root, env, root / "jobcomp.txt")
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scancel", f"--partition={NODE}"], env=env, timeout=STOP_TIMEOUT_S)
        for daemon in reversed(daemons):
            stop(daemon)
        shutil.rmtree(root, ignore_errors=True)


def _write_config(root: Path) -> None:
    (root / "state").mkdir()
    (root / "spool").mkdir()
    (root / "dev").mkdir()
    for i in range(GPUS):
        os.mknod(root / "dev" / f"gpu{i}", 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
    host = socket.gethostname().split(".")[0]
    ctld_port = free_port()
    slurmd_port = next(p for p in iter(free_port, None) if p != ctld_port)
    conf = {
        "ClusterName": "bench",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": str(ctld_port),
        "SlurmdPort": str(slurmd_port),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={root / 'munge' / 'munge.sock'}",
        "CredType": "cred/munge",
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool"),
        "SlurmctldPidFile": str(root / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "slurmd.pid"),
        "SlurmctldLogFile": str(root / "slurmctld.log"),
        "SlurmdLogFile": str(root / "slurmd.log"),
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "SlurmdParameters": "config_overrides",
        "GresTypes": "gpu",
        "MpiDefault": "none",
        "JobCompType": "jobcomp/filetxt",
        "JobCompLoc": str(root / "jobcomp.txt"),
        "AccountingStorageType": "accounting_storage/none",
    }
    lines = [f"{k}={v}" for k, v in conf.items()]
    lines.append(
        f"NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=64 Gres=gpu:{GPUS} State=UNKNOWN"
    )
    lines.append(f"PartitionName={NODE} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP")
    (root / "slurm.conf").write_text("\n".join(lines) + "\n")
    (root / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={NODE} Name=gpu File={root / 'dev'}/gpu[0-{GPUS - 1}]\n"
    )


def _munged(root: Path) -> subprocess.Popen[bytes]:
    """munged in the foreground with a fresh key (0400 in a 0700 folder, as munged demands)."""
    keys = root / "munge-key"
    keys.mkdir(mode=0o700)
    (keys / "munge.key").write_bytes(os.urandom(1024))
    (keys / "munge.key").chmod(0o400)
    (root / "munge").mkdir(mode=0o755)
    command = [
        "munged",
        "--foreground",
        "--force",  # as root
        f"--socket={root / 'munge' / 'munge.sock'}",
        f"--key-file={keys / 'munge.key'}",
        f"--log-file={root / 'munge' / 'munged.log'}",
        f"--pid-file={root / 'munge' / 'munged.pid'}",
        f"--seed-file={root / 'munge' / 'munged.seed'}",
    ]
    return spawn(command, root / "munged.out")


def _node_state(env: dict[str, str]) -> str:
    out = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def _wait_for(
    ready: Callable[[], bool], what: str, root: Path, daemons: Sequence[subprocess.Popen[bytes]] = ()
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if dead := [d for d in daemons if d.poll() is not None]:
            name = Path(dead[0].args[0]).name
            raise RuntimeError(f"{name} exited with {dead[0].returncode}: {_last_error(root, name)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Slurm: no {what} after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def _last_error(root: Path, daemon: str) -> str:
    """The last error line the daemon logged, for the one-line message that says why Slurm did not start."""
    lines = []
    for log in (root / f"{daemon}.log", root / f"{daemon}.out"):
        with contextlib.suppress(OSError):
            lines += [
                line for line in log.read_text(errors="replace").splitlines() if "error" in line.lower()
            ]
    return lines[-1].strip() if lines else "no error logged"
