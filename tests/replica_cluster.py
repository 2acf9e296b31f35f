"""Coordinator replicas as real processes on one real PostgreSQL: each `gpuctl-coordinator init` and `run`
with a coordinator.yaml of its own (its state directory, port and the shared `database:`), the second given
the first's CA and secrets key as the README says; agents as real processes, each enrolled with a join
string through one replica; jobs that print numbered lines
(tests/fault_cluster.py's), so that what a fault may never cause can be counted."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml

from agent.identity import join
from cli.api import Api
from cli.config import CliConfig
from coordinator.pki import PkiPaths
from shared.join import parse_join_string
from shared.spec import parse_spec
from shared.wire import TokenCreate
from tests.fault_cluster import REPO, free_port, job_yaml, until
from tests.harness import kill_leftover_jobs, reachable_tmpdir

COORDINATOR = [sys.executable, "-c", "from coordinator.main import main; main()"]
AGENT = [sys.executable, "-c", "from agent.main import main; main()"]
SHARED_KEYS = ("pki/ca.pem", "pki/ca-key.pem", "secrets.key")  # what every replica is given (README)


@dataclass
class Replica:
    name: str
    state_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.state_dir.parent / f"{self.name}.yaml"


@dataclass
class ReplicaCluster:
    database: str
    leader_lease: str = "3s"
    root: Path = field(default_factory=reachable_tmpdir)
    replicas: list[Replica] = field(default_factory=list)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.markers = self.root / "markers"
        self.markers.mkdir(mode=0o777)
        self.markers.chmod(0o777)  # jobs run as unprivileged users

    # --- coordinators -------------------------------------------------------------------------------

    def add_replica(self, given_keys: bool = True) -> Replica:
        """`init` a replica's state; every one after the first is given the first's keys beforehand
        (unless not `given_keys`: its `init` then makes keys of its own)."""
        name = f"c{len(self.replicas) + 1}"
        replica = Replica(name, self.root / name, free_port("127.0.0.1"))
        replica.state_dir.mkdir(mode=0o700)
        config = {
            "state_dir": str(replica.state_dir),
            "database": self.database,
            "host": "127.0.0.1",
            "port": replica.port,
            "server_names": ["localhost", "127.0.0.1"],
            "leader_lease": self.leader_lease,
            # short, so that the leader judges the hosts by what the other replica saw of them within the test
            "unreachable_after": "5s",
        }
        replica.config.write_text(yaml.safe_dump(config))
        if self.replicas and given_keys:
            for key in SHARED_KEYS:
                (replica.state_dir / key).parent.mkdir(mode=0o700, exist_ok=True)
                shutil.copy2(self.replicas[0].state_dir / key, replica.state_dir / key)
        subprocess.run(
            [*COORDINATOR, "init", "--config", str(replica.config)], check=True, capture_output=True
        )
        self.replicas.append(replica)
        return replica

    def start(self, replica: Replica) -> None:
        with open(self.root / f"{replica.name}.log", "ab") as log:
            replica.process = subprocess.Popen(
                [*COORDINATOR, "run", "--config", str(replica.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        api = self.api(replica)
        until(lambda: _answers(api), 30, f"coordinator {replica.name} to listen")

    def kill(self, replica: Replica) -> None:
        assert replica.process is not None
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait()

    def api(self, replica: Replica) -> Api:
        token = (replica.state_dir / "admin-token").read_text().strip()
        ca = PkiPaths.under(replica.state_dir).ca_cert
        return Api(CliConfig(replica.url, token, ca), timeout_s=30.0)

    def leadership(self) -> tuple[int, str]:
        """The epoch and holder in the database."""
        with psycopg.connect(self.database) as conn:
            row = conn.execute("SELECT epoch, holder FROM leadership WHERE id = 1").fetchone()
        assert row is not None
        return int(row[0]), str(row[1])

    def log(self, replica: Replica) -> str:
        return (self.root / f"{replica.name}.log").read_text(errors="replace")

    # --- agents -------------------------------------------------------------------------------------

    def add_agent(self, name: str, enrolled_through: Replica, syncs_with: list[Replica]) -> None:
        """An agent that joins with a join string through one replica (a real enrollment) and then syncs
        with `syncs_with` (the first it can reach)."""
        created = self.api(enrolled_through).create_token(TokenCreate(fleet="default", uses=1))
        pki_dir = self.root / name / "pki"
        asyncio.run(join(enrolled_through.url, parse_join_string(created.join_string), pki_dir, name))
        urls = [r.url for r in syncs_with]
        config = {
            "coordinator": urls if len(urls) > 1 else urls[0],
            "state_dir": str(self.root / name),
            "name": name,
            "simulate": "8xH100:80GB",
        }
        (self.root / f"{name}.yaml").write_text(yaml.safe_dump(config))
        with open(self.root / f"{name}.log", "ab") as log:
            self.agents[name] = subprocess.Popen(
                [*AGENT, "run", "--config", str(self.root / f"{name}.yaml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    # --- jobs ---------------------------------------------------------------------------------------

    def submit(self, api: Api, name: str, lines: int) -> str:
        return api.submit(parse_spec(job_yaml(name, lines, self.markers))).id

    def starts(self, name: str) -> int:
        marker = self.markers / name
        return marker.read_text().count("start") if marker.exists() else 0

    def full_log(self, api: Api, job_id: str, timeout_s: float = 60.0) -> bytes:
        out, offset, deadline = b"", 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = api.logs(job_id, offset, True)
            out, offset = out + chunk.data, chunk.next_offset
            if chunk.complete:
                break
        return out

    def overlapping_blocks(self) -> list[str]:
        """Pairs of allocations on one host that held a block at the same time (none, if no job was
        placed twice nor on busy blocks): an allocation holds its blocks from its placement until it ended."""
        with psycopg.connect(self.database) as conn:
            rows = conn.execute(
                "SELECT id, host_id, blocks, created_at, COALESCE(finished_at, 1e18) FROM allocations"
            ).fetchall()
        found = []
        for i, (a, host_a, blocks_a, start_a, end_a) in enumerate(rows):
            for b, host_b, blocks_b, start_b, end_b in rows[i + 1 :]:
                shared = set(json.loads(blocks_a)) & set(json.loads(blocks_b))
                if host_a == host_b and shared and start_a < end_b and start_b < end_a:
                    found.append(f"{a} and {b} on {host_a} blocks {sorted(shared)}")
        return found

    def close(self) -> None:
        for agent in self.agents.values():
            agent.send_signal(signal.SIGKILL)
            agent.wait()
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                self.kill(replica)
        kill_leftover_jobs(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def _answers(api: Api) -> bool:
    try:
        api.hosts()
    except Exception:
        return False
    return True
