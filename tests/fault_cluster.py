"""A cluster of real processes for fault tests: a coordinator that can be killed with -9 and restarted on the
same state dir and port, and agents (optionally inside a network namespace) that can be killed and restarted.
Jobs are plain processes that print numbered lines; `tally` reads their states and logs afterwards and
counts what a fault may never cause: lost jobs, jobs run twice, stuck jobs, lost or doubled log lines.

Run as `python -m tests.fault_cluster STATE_DIR HOST PORT [--unreachable-after 3s] [--lost-after 8s]`, it is
the coordinator process itself (with short poll intervals, so faults heal within seconds; the lease flags are
`gpuctl-coordinator run`'s)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cli.api import Api
from cli.config import CliConfig
from coordinator.lease_settings import duration_setting
from coordinator.pki import ensure_pki, issue_agent_cert
from coordinator.server import ServerConfig, ensure_admin_token, start_coordinator
from coordinator.service import Settings
from coordinator.store import Store
from shared.spec import parse_spec
from tests.harness import kill_leftover_jobs, reachable_tmpdir
from tests.netns_pair import Namespace

REPO = Path(__file__).resolve().parents[1]
FAULT_SETTINGS = Settings(poll_timeout_s=2.0, sync_interval_s=0.05, unreachable_after_s=60.0)
TERMINAL = {"done", "failed", "stopped", "lost"}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def until(condition: object, timeout_s: float, what: str, every_s: float = 0.1) -> None:
    """Poll `condition()` until true; AssertionError naming `what` past the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def job_yaml(name: str, lines: int, markers: Path, retry_on: str = "") -> str:
    """A job that notes each start in `markers`/NAME, then prints `NAME line i` for i in 1..lines; with
    `retry_on` (an event), a retry policy for that event."""
    retry = f"retry: {{on_events: [{retry_on}], duration: 1h}}\n" if retry_on else ""
    return (
        f"name: {name}\nresources: {{gpu: 1}}\n{retry}commands:\n"
        f"  - (umask 0; echo start >> {markers}/{name})\n"  # each attempt may run as a user of its own
        f'  - for i in $(seq 1 {lines}); do echo "{name} line $i"; sleep 0.05; done\n'
    )


@dataclass
class Counts:
    lost_jobs: int = 0
    run_twice: int = 0
    stuck: int = 0
    lines_lost: int = 0
    lines_doubled: int = 0

    def line(self, twice_why: str = "", lines_of: str = "") -> str:
        """One line; `twice_why` names the case where a job may run twice, `lines_of` whose log lines
        were counted (the final attempt's, when a job was retried)."""
        twice = f"{self.run_twice} ({twice_why})" if twice_why else str(self.run_twice)
        lines = f"log lines{' of ' + lines_of if lines_of else ''}"
        return (
            f"acknowledged jobs lost {self.lost_jobs}, jobs run twice {twice}, jobs stuck {self.stuck}, "
            f"{lines} lost {self.lines_lost}, {lines} doubled {self.lines_doubled}"
        )


@dataclass
class FaultCluster:
    host: str = "127.0.0.1"
    root: Path = field(default_factory=reachable_tmpdir)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)  # by agent name
    coordinator: subprocess.Popen[bytes] | None = None
    coordinator_flags: tuple[str, ...] = ()  # `--unreachable-after 3s --lost-after 8s`

    def __post_init__(self) -> None:
        self.state_dir = self.root / "coordinator"
        self.state_dir.mkdir(mode=0o700)
        self.port = free_port(self.host)
        self.pki = ensure_pki(self.state_dir, ["localhost", "127.0.0.1", self.host])
        store = Store(self.state_dir / "coordinator.db")
        token = ensure_admin_token(store, self.state_dir / "admin-token")
        store.close()
        self.url = f"https://{self.host}:{self.port}"
        self.api = Api(CliConfig(self.url, token, self.pki.ca_cert), timeout_s=30.0)
        self.markers = self.root / "markers"
        self.markers.mkdir(mode=0o777)
        self.markers.chmod(0o777)  # jobs run as unprivileged users

    # --- the coordinator -----------------------------------------------------------------------------

    def start_coordinator(self) -> None:
        argv = [sys.executable, "-m", "tests.fault_cluster", str(self.state_dir), self.host, str(self.port)]
        argv += self.coordinator_flags
        with open(self.root / "coordinator.log", "ab") as log:
            self.coordinator = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        until(self._healthy, 30, "the coordinator to listen")

    def _healthy(self) -> bool:
        try:
            self.api.hosts()
        except Exception:
            return False
        return True

    def kill_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait()

    # --- agents --------------------------------------------------------------------------------------

    def add_agent(
        self, name: str, simulate: str = "4xH100:80GB", netns: Namespace | None = None, **extra: Any
    ) -> None:
        """`extra`: more agent.yaml settings, as the file spells them."""
        cert, key = issue_agent_cert(self.pki, name, self.root / name / "pki")
        config = {
            "coordinator": self.url,
            "state_dir": str(self.root / name),
            "name": name,
            "simulate": simulate,
            "ca_file": str(self.pki.ca_cert),
            "cert_file": str(cert),
            "key_file": str(key),
            **extra,
        }
        (self.root / f"{name}.yaml").write_text(yaml.safe_dump(config))
        if netns is not None:
            self.namespaces[name] = netns
        self.start_agent(name)

    def start_agent(self, name: str) -> None:
        argv = [sys.executable, "-c", "from agent.main import main; main()", "run", "--config"]
        argv.append(str(self.root / f"{name}.yaml"))
        if name in self.namespaces:
            argv = self.namespaces[name].command(argv)
        with open(self.root / f"{name}.log", "ab") as log:
            self.agents[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def kill_agent(self, name: str) -> None:
        agent = self.agents.pop(name)
        agent.send_signal(signal.SIGKILL)
        agent.wait()

    def agent_log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    # --- jobs and what became of them -----------------------------------------------------------------

    def submit(self, name: str, lines: int, retry_on: str = "") -> str:
        return self.api.submit(parse_spec(job_yaml(name, lines, self.markers, retry_on))).id

    def wait_ended(self, ids: list[str], timeout_s: float) -> None:
        """Wait until every job ended (or the deadline passes: `tally` counts those as stuck)."""
        with contextlib.suppress(AssertionError):
            until(lambda: all(self.api.job(i).status in TERMINAL for i in ids), timeout_s, "jobs", 0.5)

    def full_log(self, job_id: str, timeout_s: float = 60.0) -> bytes:
        out, offset, deadline = b"", 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = self.api.logs(job_id, offset, True)
            out, offset = out + chunk.data, chunk.next_offset
            if chunk.complete:
                break
        return out

    def tally(self, acked: dict[str, str], lines: int) -> Counts:
        """Counts over the acknowledged jobs (id → name), each expected to print `lines` numbered lines."""
        counts = Counts()
        for job_id, name in acked.items():
            try:
                job = self.api.job(job_id)
            except Exception:
                counts.lost_jobs += 1
                continue
            marker = self.markers / name
            starts = marker.read_text().count("start") if marker.exists() else 0
            counts.run_twice += max(0, starts - 1)
            if job.status not in TERMINAL:
                counts.stuck += 1
                continue
            seen = Counter(self.full_log(job_id).decode(errors="replace").splitlines())
            for i in range(1, lines + 1):
                got = seen.get(f"{name} line {i}", 0)
                counts.lines_lost += got == 0
                counts.lines_doubled += max(0, got - 1)
        return counts

    def close(self) -> None:
        for name in list(self.agents):
            self.kill_agent(name)
        if self.coordinator is not None and self.coordinator.poll() is None:
            self.kill_coordinator()
        kill_leftover_jobs(self.root)
        for ns in self.namespaces.values():
            ns.close()
        shutil.rmtree(self.root, ignore_errors=True)


async def _serve(state_dir: Path, host: str, port: int, settings: Settings) -> None:
    names = ("localhost", "127.0.0.1", host)
    running = await start_coordinator(ServerConfig(state_dir, host, port, names, settings))
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--unreachable-after")
    parser.add_argument("--lost-after")
    args = parser.parse_args()
    settings = FAULT_SETTINGS
    if args.unreachable_after:
        lease_s = duration_setting("--unreachable-after", args.unreachable_after)
        settings = dataclasses.replace(settings, unreachable_after_s=lease_s)
    if args.lost_after:
        settings = dataclasses.replace(
            settings, lost_after_s=duration_setting("--lost-after", args.lost_after)
        )
    asyncio.run(_serve(args.state_dir, args.host, args.port, settings))
