"""A real OpenSSH server as a bastion (login node), and a real tinyproxy, each on its own config in a namespace.

The bastion's user is root, with an authorized_keys file in the test's folder (`AuthorizedKeysFile`), so
nothing of the machine's own ssh setup is read or changed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.netns import SSHD, Network, stop, wait_until


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key at `path` (and `path`.pub); returns the public key line."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return Path(f"{path}.pub").read_text().strip()


def fingerprint(pub_file: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub_file)], check=True, capture_output=True, text=True
    )
    return out.stdout.split()[1]


@dataclass
class Bastion:
    net: Network
    ns: str
    address: str
    port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.root / "host_ed25519"

    def known_hosts_line(self) -> str:
        key = Path(f"{self.host_key}.pub").read_text().split()
        return f"[{self.address}]:{self.port} {key[0]} {key[1]}"

    def configure(self, authorized_keys: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key, f"bastion {self.ns}")
        (self.root / "authorized_keys").write_text(authorized_keys + "\n")
        (self.root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {self.host_key}\n"
            f"PidFile {self.root}/sshd.pid\nAuthorizedKeysFile {self.root}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nAllowTcpForwarding yes\nPermitTTY no\nX11Forwarding no\n"
            "ClientAliveInterval 5\nLogLevel VERBOSE\n"
        )

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
        self.process = self.net.popen(
            self.ns, [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], self.root / "sshd.log"
        )
        wait_until(self._listening, 10, f"sshd on {self.address}:{self.port}")

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
        out = self.net.run(self.ns, ["ss", "-Htln", f"sport = :{self.port}"], timeout_s=10).stdout
        return str(self.port) in out

    def restart(self, new_host_key: bool = False) -> None:
        """Stop sshd and every session it serves (as a reboot of the login node would), then start it again."""
        assert self.process is not None
        stop(self.process)
        for pid in self.net.pids(self.ns):  # sessions outlive their listener: end them too
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("sshd"):
                os.kill(pid, signal.SIGKILL)
        if new_host_key:
            keygen(self.host_key, f"bastion {self.ns} (new)")
        self.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tinyproxy(
    net: Network,
    ns: str,
    address: str,
    port: int,
    root: Path,
    allow: str,
    connect_ports: tuple[int, ...] = (),
) -> None:
    """tinyproxy on `address:port` in `ns`, allowing clients from `allow` and CONNECT to `connect_ports`
    (any port when empty: no ConnectPort line at all allows every port; `ConnectPort 0` is not "any" in every
    version)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tinyproxy.conf").write_text(
        f"Port {port}\nListen {address}\nTimeout 600\nMaxClients 50\nAllow {allow}\n"
        f'LogLevel Connect\nPidFile "{root}/tinyproxy.pid"\n'
        + "".join(f"ConnectPort {p}\n" for p in connect_ports)
    )
    net.popen(ns, ["tinyproxy", "-d", "-c", str(root / "tinyproxy.conf")], root / "tinyproxy.log")

    def listening() -> bool:
        return str(port) in net.run(ns, ["ss", "-Htln", f"sport = :{port}"], timeout_s=10).stdout

    wait_until(listening, 10, "tinyproxy")
