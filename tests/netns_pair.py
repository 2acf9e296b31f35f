"""A network namespace for tests, joined to the root namespace by a veth pair (tests/netns.py builds whole
networks of several), with an address on each end, whose link can be cut and restored; commands run inside
it. Needs root and iproute2.

Generic on purpose: `Namespace.make("gpuctl-t1", "10.231.7")` gives the root side 10.231.7.1 and the
namespace side 10.231.7.2 (a /24 of their own), and `close()` removes both (deleting the namespace deletes
its end of the pair, and with it the other end).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.real_parts import part_missing


def require_netns() -> None:
    """Skip where namespaces cannot be made (not root, no iproute2); under CI that is a failure."""
    problem = None
    if os.geteuid() != 0:
        problem = "network namespaces need root"
    elif shutil.which("ip") is None:
        problem = "network namespaces need iproute2 (`ip`)"
    if problem is not None:
        part_missing(problem)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Namespace:
    name: str
    host_veth: str  # the root namespace's end
    ns_veth: str  # the namespace's end
    host_addr: str  # reachable from inside the namespace
    ns_addr: str

    @classmethod
    def make(cls, name: str, prefix24: str) -> Namespace:
        """A namespace `name` with lo up and a veth pair to the root namespace on `prefix24`.0/24."""
        short = name[-8:]
        ns = cls(name, f"vh-{short}", f"vn-{short}", f"{prefix24}.1", f"{prefix24}.2")
        _ip("netns", "add", name)
        try:
            _ip("link", "add", ns.host_veth, "type", "veth", "peer", "name", ns.ns_veth)
            _ip("link", "set", ns.ns_veth, "netns", name)
            _ip("addr", "add", f"{ns.host_addr}/24", "dev", ns.host_veth)
            _ip("netns", "exec", name, "ip", "addr", "add", f"{ns.ns_addr}/24", "dev", ns.ns_veth)
            _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
            ns.up()
        except BaseException:
            ns.close()
            raise
        return ns

    def down(self) -> None:
        """Cut the link at the namespace's end: connections open across it hear nothing more (a silent
        partition); the root side keeps its address, so what listens there stays reachable locally."""
        _ip("netns", "exec", self.name, "ip", "link", "set", self.ns_veth, "down")

    def up(self) -> None:
        _ip("netns", "exec", self.name, "ip", "link", "set", self.ns_veth, "up")
        _ip("link", "set", self.host_veth, "up")

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(argv), **kwargs)

    def close(self) -> None:
        """Idempotent. Processes still inside keep running, without a network: stop them first."""
        subprocess.run(["ip", "link", "del", self.host_veth], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
