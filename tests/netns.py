"""Real network namespaces joined by veth pairs, and real daemons (sshd, tinyproxy) started inside them.

Everything made here is undone by `Network.close` (namespaces, and with them their veths and the processes
`Network.popen` started in them), also when a test fails half way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.real_parts import part_missing, worker_index

SSHD = "/usr/sbin/sshd"


def unavailable(reason: str) -> None:
    """Fail under CI, skip elsewhere: these tests must not pass silently in CI."""
    message = (
        f"needs network namespaces, sshd and tinyproxy (run as root; scripts/test installs them): {reason}"
    )
    part_missing(message)


def require_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        unavailable("not root")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None and not Path(tool).exists():
            unavailable(f"no {tool}")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Network:
    """Namespaces named `<prefix><name>`; links are /24s under 10.<octet>.<n>.0."""

    def __init__(self, prefix: str, octet: int) -> None:
        self.prefix, self.octet = prefix, octet
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._links = 0

    def ns(self, name: str) -> str:
        full = self.prefix + name
        if full not in self.namespaces:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", full)  # left by a test that was killed
            _ip("netns", "add", full)
            self.namespaces.append(full)
            _ip("-n", full, "link", "set", "lo", "up")
        return full

    def link(self, a: str, b: str) -> tuple[str, str]:
        """A veth pair between namespaces `a` and `b` ("" is the test's own); their addresses (a's, b's)."""
        self._links += 1
        n = self._links
        ends = (f"{self.prefix}{n}a", f"{self.prefix}{n}b")
        addrs = (f"10.{self.octet}.{n}.1", f"10.{self.octet}.{n}.2")
        _ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
        for end, name, addr in zip(ends, (a, b), addrs, strict=True):
            if name:
                _ip("link", "set", end, "netns", self.ns(name))
            where = ["-n", self.ns(name)] if name else []
            _ip(*where, "addr", "add", f"{addr}/24", "dev", end)
            _ip(*where, "link", "set", end, "up")
        return addrs

    def route(self, name: str, dest: str, via: str) -> None:
        _ip(*(["-n", self.ns(name)] if name else []), "route", "replace", dest, "via", via)

    def popen(self, name: str, argv: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
        """A process in namespace `name`, in a session of its own, its output in `log`."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(name), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kwargs,  # type: ignore[call-overload]
            )
        self.processes.append(process)
        return process

    def run(self, name: str, argv: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(name), *argv], capture_output=True, text=True, timeout=timeout_s
        )

    def pids(self, name: str) -> list[int]:
        """The processes running in namespace `name` now."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.ns(name)], capture_output=True, text=True, timeout=10
        )
        return [int(p) for p in out.stdout.split()]

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        for name in reversed(self.namespaces):
            for pid in subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10
            ).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(
                        int(pid), signal.SIGKILL
                    )  # jobs and ssh left in it: only what runs in our namespace
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)  # its veths go with it


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process's whole session (it was started with one of its own) and reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


_networks = 0  # made by this process so far


@contextlib.contextmanager
def network(prefix: str) -> Iterator[Network]:
    # Parallel runs on one machine use different addresses: the two workers of one pytest-xdist run by
    # their parity, apart for certain; other runs on the machine by their pids, apart most likely. And each
    # network of one worker has addresses of its own: the kernel tears a deleted namespace's veths down
    # after `ip netns del` returns, so the last test's routes may still be there when the next one starts.
    global _networks
    _networks += 1
    octet = 100 + ((os.getpid() + _networks) % 50) * 2 + worker_index() % 2  # 10.1xx: test_faults has 10.23x
    net = Network(f"{prefix}{os.getpid() % 10000}", octet)
    try:
        yield net
    finally:
        net.close()


def wait_until(check: object, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
