"""An SSH tunnel to the coordinator through one or more bastions (login nodes), with the system's OpenSSH client.

`ssh -N -J hop1,...` forwards a unix socket in the agent's state dir to the coordinator's host and port, as seen
from the last hop (one socket per coordinator when several are configured, all in the one ssh process); the
agent speaks TLS to the coordinator over that socket, so the bastions see ciphertext.
Each hop's settings (user, port, key, known_hosts) go into an ssh_config file written beside the socket, since
options on ssh's command line apply to the last hop only. Host keys are always checked (`known_hosts` is
required), ssh never prompts, and a failure becomes one line naming the hop (`Tunnel.error`).

The supervisor (`Tunnel.run`) restarts ssh whenever it exits or its socket stops answering, with exponential
backoff and jitter; a tunnel that stayed up a while starts again from the shortest wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import stat
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gpuctl.agent")

SSH = "ssh"
SERVER_ALIVE_INTERVAL_S = 5  # ssh's keepalive: a dead bastion is noticed within interval × count
SERVER_ALIVE_COUNT = 3
CONNECT_TIMEOUT_S = 10
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0  # a tunnel up this long resets the backoff
HEALTH_INTERVAL_S = 1.0
STDERR_LINES = 50  # of ssh's stderr kept to explain an exit


@dataclass(frozen=True)
class TcpForward:
    """127.0.0.1:`local_port` on this host to `host`:`port` as the last hop reaches it."""

    local_port: int
    host: str
    port: int


@dataclass(frozen=True)
class SocketForward:
    """The unix socket `path` on this host to the coordinator at `host`:`port` as the last hop reaches it."""

    path: Path
    host: str
    port: int


def socket_name(index: int) -> str:
    """The forwarding socket of the configured coordinator number `index` (the first keeps its old name)."""
    return "coordinator.sock" if index == 0 else f"coordinator-{index}.sock"


class HopError(ValueError):
    """A bastion setting that cannot be used; one line naming the field."""


@dataclass(frozen=True)
class Hop:
    host: str
    user: str | None = None
    port: int = 22
    identity_file: Path | None = None
    known_hosts: Path | None = None

    def __str__(self) -> str:
        return self.host if self.port == 22 else f"{self.host}:{self.port}"


def parse_hop(text: str, field: str = "bastion") -> Hop:
    """`[USER@]HOST[:PORT]` (an IPv6 address in brackets). Raises HopError naming `field`."""
    match = re.fullmatch(r"(?:([^@\s:/]+)@)?(\[[0-9a-fA-F:.]+\]|[^@\s:/\[\]]+)(?::(\d{1,5}))?", text.strip())
    if not match:
        raise HopError(f"{field}: expected [USER@]HOST[:PORT], got {text!r}")
    user, host, port = match.groups()
    if port is not None and not 0 < int(port) < 65536:
        raise HopError(f"{field}: port {port} is not between 1 and 65535")
    return Hop(host=host.strip("[]"), user=user, port=int(port) if port else 22)


def ssh_config(hops: tuple[Hop, ...]) -> str:
    """The ssh_config text naming each hop `hop0`, `hop1`, ... (first hop first)."""
    blocks = []
    for i, hop in enumerate(hops):
        lines = [
            f"Host hop{i}",
            f"  HostName {hop.host}",
            f"  Port {hop.port}",
            "  BatchMode yes",
            "  StrictHostKeyChecking yes",
            f"  UserKnownHostsFile {hop.known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  IdentitiesOnly yes",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication no",
            f"  ConnectTimeout {CONNECT_TIMEOUT_S}",
            f"  ServerAliveInterval {SERVER_ALIVE_INTERVAL_S}",
            f"  ServerAliveCountMax {SERVER_ALIVE_COUNT}",
            "  LogLevel DEBUG1",  # for the "Server host key: ... SHA256:..." line that errors quote
        ]
        if hop.user:
            lines.append(f"  User {hop.user}")
        if hop.identity_file:
            lines.append(f"  IdentityFile {hop.identity_file}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def ssh_command(
    config_file: Path,
    hops: tuple[Hop, ...],
    socket_forwards: tuple[SocketForward, ...],
    tcp_forwards: tuple[TcpForward, ...] = (),
) -> list[str]:
    """ssh's argv: a local forward from each socket to its coordinator, through every hop (and one from
    127.0.0.1:PORT for each of `tcp_forwards`, such as the registry mirror)."""
    argv = [SSH, "-F", str(config_file), "-N", "-T"]
    argv += [
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "StreamLocalBindUnlink=yes",
        "-o",
        "StreamLocalBindMask=0177",
    ]
    if len(hops) > 1:
        argv += ["-J", ",".join(f"hop{i}" for i in range(len(hops) - 1))]
    for to_coordinator in socket_forwards:
        argv += ["-L", f"{to_coordinator.path}:{_bracketed(to_coordinator.host)}:{to_coordinator.port}"]
    for forward in tcp_forwards:
        argv += ["-L", f"127.0.0.1:{forward.local_port}:{_bracketed(forward.host)}:{forward.port}"]
    return [*argv, f"hop{len(hops) - 1}"]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def explain(stderr_lines: list[str], hops: tuple[Hop, ...]) -> str:
    """One line saying why ssh failed, naming the hop (and the host key's fingerprint when it is the key)."""
    text = "\n".join(stderr_lines)
    fingerprint = _fingerprint(text)

    def hop_of(host: str) -> str:
        host = host.strip("[]")
        for hop in hops:
            if hop.host == host or host.startswith(f"{hop.host}]:") or host == f"{hop.host}]:{hop.port}":
                return str(hop)
        return host

    if m := re.search(r"Host key for (\S+) has changed", text):
        return f"bastion {hop_of(m.group(1))} changed its host key (now {fingerprint}); if that is expected, put the new key in known_hosts"
    if m := re.search(r"No \S+ host key is known for (\S+)", text):
        return f"bastion {hop_of(m.group(1))} has a host key not in known_hosts ({fingerprint})"
    if "Host key verification failed" in text:
        return f"a bastion's host key could not be verified ({fingerprint})"
    if m := re.search(r"(\S+)@(\S+?): Permission denied", text):
        return f"bastion {hop_of(m.group(2))} refused the key for {m.group(1)}"
    if m := re.search(r"connect to host (\S+) port (\d+): (.+)", text):
        return f"bastion {hop_of(m.group(1))} port {m.group(2)}: {m.group(3).strip()}"
    if m := re.search(r"(?:Could not resolve hostname|ssh: Could not resolve hostname) (\S+?):? (.+)", text):
        return f"bastion {m.group(1)}: cannot resolve the name ({m.group(2).strip()})"
    if m := re.search(r"bind \[?127\.0\.0\.1\]?:(\d+): (.+)", text):
        return f"ssh tunnel: cannot listen on 127.0.0.1:{m.group(1)} (docker.mirror_local_port): {m.group(2).strip()}"
    if m := re.search(r"channel \d+: open failed: .*|Connection closed by .*|Connection reset by .*", text):
        return f"bastion: {m.group(0).strip()}"
    for line in reversed(stderr_lines):
        if line and not line.startswith("debug"):
            return f"ssh tunnel: {line.strip()}"
    return "ssh tunnel: ssh exited"


def _fingerprint(text: str) -> str:
    found = re.findall(r"SHA256:[A-Za-z0-9+/=]+", text)
    return found[-1] if found else "fingerprint unknown"


class Tunnel:
    """Keeps one ssh process forwarding a socket to each coordinator (`targets`: host and port, in the
    configured order). Not thread-safe; one per agent."""

    def __init__(
        self,
        hops: tuple[Hop, ...],
        runtime_dir: Path,
        targets: tuple[tuple[str, int], ...],
        tcp_forwards: tuple[TcpForward, ...] = (),
    ) -> None:
        if not hops:
            raise HopError("bastion: at least one hop")
        for i, hop in enumerate(hops):
            if hop.known_hosts is None:
                raise HopError(f"bastion[{i}].known_hosts: required (host keys are always checked)")
        self.hops = hops
        runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.forwards = tuple(
            SocketForward(runtime_dir / socket_name(i), host, port) for i, (host, port) in enumerate(targets)
        )
        self.socket_path = self.forwards[0].path  # ssh binds every socket before it is up: one is the test
        self.config_file = runtime_dir / "ssh_config"
        self.tcp_forwards = tcp_forwards
        self.error = ""  # why the tunnel is down now; "" while it is up (or before its first try)
        self.last_error = ""  # the most recent failure, kept after it heals (reported in the next sync)
        self.last_error_at = 0.0
        self.up = asyncio.Event()
        self.tried = asyncio.Event()  # set after each attempt that ended (up, or failed)
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None

    def describe(self) -> str:
        return "bastion " + " → ".join(str(h) for h in self.hops)

    def command(self) -> list[str]:
        return ssh_command(self.config_file, self.hops, self.forwards, self.tcp_forwards)

    def socket_for(self, host: str, port: int) -> Path:
        """The socket that reaches the coordinator at `host`:`port` (the first, for one not configured)."""
        return next((f.path for f in self.forwards if (f.host, f.port) == (host, port)), self.socket_path)

    async def run(self) -> None:
        """Supervise until cancelled: start ssh, wait for its socket, watch it, restart with backoff."""
        backoff_s = BACKOFF_MIN_S
        self.config_file.write_text(ssh_config(self.hops))
        while True:
            started = time.monotonic()
            await self._once()
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff_s = BACKOFF_MIN_S
            wait_s = backoff_s * random.uniform(0.8, 1.2)
            log.warning("ssh tunnel down: %s; restarting in %.1f s", self.error, wait_s)
            await asyncio.sleep(wait_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            self.restarts += 1

    async def _once(self) -> None:
        """One ssh process, from start to exit (or to a socket that stopped answering)."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        stderr: deque[str] = deque(maxlen=STDERR_LINES)
        try:
            self._process = process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a signal to the agent's group is not a signal to ssh
            )
        except OSError as exc:
            self._failed(f"cannot run {SSH} (install openssh-client): {exc.strerror}")
            return
        reader = asyncio.create_task(_read_lines(process, stderr))
        try:
            exited = await self._watch(process)
            code = process.returncode
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            await reader
            self._process = None
            self.up.clear()
        if not exited:
            self._failed("ssh's forwarding socket went away")
        elif code is not None and code < 0:
            self._failed(f"ssh was killed (signal {-code})")
        else:
            self._failed(explain(list(stderr), self.hops))

    async def _watch(self, process: asyncio.subprocess.Process) -> bool:
        """Wait until ssh exits (True) or its socket stops answering (False); marks the tunnel up meanwhile."""
        while process.returncode is None:
            exited = asyncio.create_task(process.wait())
            done, _ = await asyncio.wait({exited}, timeout=HEALTH_INTERVAL_S)
            if done:
                return True
            exited.cancel()
            answers = _is_socket(self.socket_path)
            if answers and not self.up.is_set():
                targets = ", ".join(f"{f.host}:{f.port}" for f in self.forwards)
                log.info("ssh tunnel up: %s → %s", self.describe(), targets)
                self.error = ""
                self.up.set()
                self.tried.set()
            elif not answers and self.up.is_set():
                return False
        return True

    def _failed(self, why: str) -> None:
        self.error = self.last_error = why
        self.last_error_at = time.time()
        self.tried.set()

    def kill(self) -> None:
        """Kill the ssh process (the supervisor starts another); for tests and operators' drills."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()


async def _read_lines(process: asyncio.subprocess.Process, into: deque[str]) -> None:
    assert process.stderr is not None
    async for raw in process.stderr:
        line = raw.decode(errors="replace").rstrip()
        into.append(line)
        if not line.startswith("debug"):
            log.debug("ssh: %s", line)


def _is_socket(path: Path) -> bool:
    """ssh makes its listening socket only once every hop let it in (and removes it when it exits cleanly).
    Connecting to it would open a channel to the coordinator on every check, so its presence is the test."""
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False
