"""A site behind a login node, built from real parts: a coordinator process in its own namespace, bastions
(sshd) or a proxy (tinyproxy) in theirs, and a GPU node namespace whose only link is to the first bastion.

    test ── coord ── b1 ── node          (b1: sshd, or tinyproxy; node's only route is to b1)
              └──── b2 ── b1             (the second hop of the two-hop path)
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cli.api import Api
from cli.config import CliConfig
from shared.wire import TokenCreate
from tests.harness import kill_leftover_jobs, reachable_tmpdir
from tests.netns import Network, network, stop, wait_until
from tests.sshd import Bastion, keygen

COORD_PORT = 8443
SSH_PORT = 2222


@dataclass
class Site:
    net: Network
    root: Path
    coord: str  # the coordinator's address, its URL's host
    b1_to_node: str  # b1's address on the node's link
    b2: str  # b2's address on b1's link
    api: Api | None = None
    bastions: dict[str, Bastion] = field(default_factory=dict)
    agent: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.coord}:{COORD_PORT}"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"

    def start_coordinator(self) -> None:
        state, config = self.root / "coordinator", self.root / "coordinator.yaml"
        config.write_text(
            yaml.safe_dump({"server_names": [self.coord], "port": COORD_PORT, "host": self.coord})
        )
        argv = [sys.executable, "-c", "from coordinator.main import main; main()"]
        init = self.net.run("coord", [*argv, "init", "--config", str(config), "--state-dir", str(state)])
        assert init.returncode == 0, init.stderr
        self.net.popen(
            "coord",
            [*argv, "run", "--config", str(config), "--state-dir", str(state)],
            self.root / "coord.log",
        )
        token = (state / "admin-token").read_text().strip()
        self.api = Api(CliConfig(self.url, token, state / "pki" / "ca.pem"), timeout_s=30)
        wait_until(self._answers, 20, "the coordinator")
        cli = self.root / "cli.yaml"
        cli.write_text(
            yaml.safe_dump({"url": self.url, "token": token, "ca_file": str(state / "pki" / "ca.pem")})
        )

    def _answers(self) -> bool:
        assert self.api is not None
        try:
            self.api.hosts()
        except Exception:
            return False
        return True

    def add_bastion(self, name: str, address: str) -> Bastion:
        client_pub = Path(f"{self.client_key}.pub")
        if not client_pub.exists():
            keygen(self.client_key, "gpuctl agent")
        bastion = Bastion(self.net, name, address, SSH_PORT, self.root / name)
        bastion.configure(client_pub.read_text().strip())
        bastion.start()
        self.bastions[name] = bastion
        return bastion

    @property
    def client_key(self) -> Path:
        return self.root / "agent_ed25519"

    def trust(self, *names: str) -> Path:
        """A known_hosts file with these bastions' current host keys."""
        path = self.root / "known_hosts"
        path.write_text("".join(self.bastions[n].known_hosts_line() + "\n" for n in names))
        return path

    def join_string(self) -> str:
        assert self.api is not None
        return self.api.create_token(TokenCreate(fleet="dc1")).join_string

    def agent_argv(self, command: str, *link: str, urls: tuple[str, ...] = ()) -> list[str]:
        """`urls`: the coordinators the agent is given, in order (default: the one coordinator)."""
        argv = [sys.executable, "-c", "from agent.main import main; main()", command]
        if command == "join":
            argv.append(self.join_string())
        for url in urls or (self.url,):
            argv += ["--coordinator", url]
        return argv + [
            "--config", str(self.root / "no-agent.yaml"),
            "--state-dir", str(self.root / "node"), "--name", "gpu-node", "--simulate", "1xH100:80GB",
            "--blocks", "1", *link,
        ]  # fmt: skip

    def start_agent(
        self, command: str, *link: str, env: dict[str, str] | None = None, urls: tuple[str, ...] = ()
    ) -> None:
        environ = {**os.environ, **(env or {})}
        argv = self.agent_argv(command, *link, urls=urls)
        self.agent = self.net.popen("node", argv, self.agent_log, env=environ)

    def join_behind_bastion(self) -> None:
        """Start the agent on the node, joining through bastion b1 (its only way out), b1's host key trusted."""
        b1 = self.add_bastion("b1", self.b1_to_node)
        link = ["--bastion", f"root@{b1.address}:{b1.port}", "--bastion-identity", str(self.client_key)]
        self.start_agent("join", *link, "--bastion-known-hosts", str(self.trust("b1")))

    def stop_agent(self) -> None:
        if self.agent is not None:
            stop(self.agent)
            self.agent = None

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.agent_log.read_text(errors="replace")))

    def wait_log(self, pattern: str, count: int = 1, timeout_s: float = 30) -> float:
        """Wait until `pattern` appears `count` times in the agent's log; returns when (monotonic)."""
        wait_until(
            lambda: self.log_count(pattern) >= count, timeout_s, f"{pattern!r} ×{count} in the agent's log"
        )
        return time.monotonic()

    def hosts_output(self) -> str:
        """What `gpuctl hosts` prints (a wide terminal, so nothing is folded)."""
        env = {**os.environ, "GPUCTL_CONFIG": str(self.root / "cli.yaml"), "COLUMNS": "400"}
        out = subprocess.run(
            [sys.executable, "-c", "from cli.main import main; main()", "hosts"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    def host_detail_output(self) -> str:
        env = {**os.environ, "GPUCTL_CONFIG": str(self.root / "cli.yaml"), "COLUMNS": "400"}
        out = subprocess.run(
            [sys.executable, "-c", "from cli.main import main; main()", "hosts", "-v", "gpu-node"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout


@contextlib.contextmanager
def login_site(prefix: str) -> Iterator[Site]:
    root = reachable_tmpdir()
    try:
        with network(prefix) as net:
            coord, b1 = net.link("coord", "b1")
            test_end, coord_end = net.link("", "coord")
            net.route("", f"{coord}/32", coord_end)  # the test (and the CLI) reach the coordinator
            b1_to_b2, b2 = net.link("b1", "b2")
            b2_to_coord, coord_to_b2 = net.link("b2", "coord")
            net.route("b2", f"{coord}/32", coord_to_b2)  # b2 is the two-hop path's last hop
            node, b1_to_node = net.link("node", "b1")  # the node's only link
            del test_end, b1_to_b2, b2_to_coord, node
            site = Site(net, root, coord, b1_to_node, b2)
            try:
                yield site
            finally:
                site.stop_agent()
                kill_leftover_jobs(root)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False, timeout=60)


def log_text(site: Site, job_id: str, timeout_s: float = 60) -> str:
    """The job's whole log, once the coordinator says it is complete (the job ended, every byte arrived)."""
    assert site.api is not None
    out, offset = b"", 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        chunk = site.api.logs(job_id, offset, True)
        out, offset = out + chunk.data, chunk.next_offset
        if chunk.complete:
            return out.decode()
    raise AssertionError(f"the log of {job_id} did not complete: {out[-300:]!r}")
