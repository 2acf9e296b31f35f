"""A gpuctl cluster of real processes on loopback, for the bench: one `gpuctl-coordinator run` with the
shipped default settings, simulated 8-GPU hosts with the plain-process runtime, and a CLI config.

One host runs as `gpuctl-agent run`, as on a real machine. Many hosts share a few processes
(bench/agents.py, AGENTS_PER_PROCESS each), every agent still with its own certificate and connection.
Everything the cluster started is stopped on the way out, the jobs' processes too, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from cli.api import Api
from cli.config import CliConfig, save_cli_config
from coordinator.pki import PkiPaths, issue_agent_cert
from tests.harness import kill_leftover_jobs

AGENTS_PER_PROCESS = 25  # 100 hosts in 4 processes: two per core, and ~25 agents' job starts per event loop
SIMULATED = "8xH100:80GB"
READY_TIMEOUT_S = 120.0  # 100 hosts on a loaded two-core machine take a while
STOP_TIMEOUT_S = 10.0
PORT_RANGE = (20000, 32000)


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # for `gpuctl` commands: PATH and GPUCTL_CONFIG
    api: Api
    spec_path: Path  # one trivial job: `true` on 1 GPU
    coordinator_pid: int


def bin_path(name: str) -> str:
    """A console script of the environment the bench runs in (the venv beside its python)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def free_port() -> int:
    """A loopback port free now, below Linux's ephemeral range (32768 and up by default): a port the kernel
    handed out at random could be taken by another program's outgoing connection before a daemon binds it."""
    for _ in range(100):
        port = random.randrange(*PORT_RANGE)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


@contextlib.contextmanager
def gpuctl_cluster(hosts: int, database: str = "") -> Iterator[Cluster]:
    """Start a coordinator and `hosts` simulated hosts; yield once every host is ready; stop all of it.
    `database`: the coordinator's (a URL); SQLite under its state dir when empty."""
    root = Path(tempfile.mkdtemp(prefix="gpuctl-bench-"))
    root.chmod(0o755)  # job users (unprivileged) must reach the allocations' folders
    processes: list[subprocess.Popen[bytes]] = []
    try:
        cluster = _start(root, hosts, processes, database)
        yield cluster
    finally:
        for process in reversed(processes):
            stop(process)
        kill_leftover_jobs(root)
        shutil.rmtree(root, ignore_errors=True)


def _start(root: Path, hosts: int, processes: list[subprocess.Popen[bytes]], database: str) -> Cluster:
    state, port = root / "coordinator", free_port()
    config = root / "coordinator.yaml"
    raw = {"server_names": ["localhost", "127.0.0.1"], "host": "127.0.0.1"}
    config.write_text(yaml.safe_dump(raw | ({"database": database} if database else {})))
    args = ["--config", str(config), "--state-dir", str(state), "--port", str(port)]
    subprocess.run([bin_path("gpuctl-coordinator"), "init", *args], check=True, capture_output=True)
    processes.append(spawn([bin_path("gpuctl-coordinator"), "run", *args], root / "coordinator.log"))
    url, pki = f"https://127.0.0.1:{port}", PkiPaths.under(state)
    configs = [_agent_config(root, url, pki, f"bench-{i:03d}") for i in range(hosts)]
    if hosts == 1:
        processes.append(
            spawn([bin_path("gpuctl-agent"), "run", "--config", str(configs[0])], root / "agent.log")
        )
    else:
        for n in range(0, hosts, AGENTS_PER_PROCESS):
            group = [str(c) for c in configs[n : n + AGENTS_PER_PROCESS]]
            log = root / f"agents-{n // AGENTS_PER_PROCESS}.log"
            processes.append(spawn([sys.executable, "-m", "bench.agents", *group], log))
    cli = CliConfig(url, (state / "admin-token").read_text().strip(), pki.ca_cert)
    cli_path = save_cli_config(cli, root / "cli.yaml")
    spec = root / "job.yaml"
    spec.write_text("name: bench\ncommands: ['true']\nresources: {gpu: 1}\n")
    env = {**os.environ, "GPUCTL_CONFIG": str(cli_path)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    api = Api(cli, timeout_s=60.0)
    _wait_ready(api, hosts, processes)
    return Cluster(root, env, api, spec, processes[0].pid)


def _agent_config(root: Path, url: str, pki: PkiPaths, name: str) -> Path:
    cert, key = issue_agent_cert(pki, name, root / name / "pki")
    path = root / f"{name}.yaml"
    raw = {
        "coordinator": url,
        "state_dir": str(root / name),
        "name": name,
        "simulate": SIMULATED,
        "ca_file": str(pki.ca_cert),
        "cert_file": str(cert),
        "key_file": str(key),
        "docker_socket": f"unix://{root / 'no-docker.sock'}",  # plain processes only: no engine probed
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Its own session, so that stopping it reaches all it started; its output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(api: Api, hosts: int, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if dead := [p for p in processes if p.poll() is not None]:
            raise RuntimeError(f"{dead[0].args[0]} exited with {dead[0].returncode} while starting")
        with contextlib.suppress(Exception):
            if sum(h.status == "ready" for h in api.hosts()) == hosts:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{hosts} hosts not ready after {READY_TIMEOUT_S:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group, then SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
