"""A real Docker engine for the tests: Debian's dockerd on a private socket, data root and exec root (so it
never meets another engine on the machine), with a job image made from Debian's busybox-static.

Under CI (`CI` set to anything) a test that needs the engine fails when it cannot start; elsewhere it is skipped with
the reason. tests/conftest.py registers the fixture `docker_engine`, shared by every module of the session.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import docker
import pytest

from agent.runtime.engine import EngineUnavailable, connect
from tests.real_parts import part_missing

IMAGE = "gpuctl-test/busybox:1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Engine:
    socket: str  # unix:// URL
    client: docker.DockerClient
    image: str
    root: Path


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere: the tests that need a real engine must not pass silently in CI."""
    part_missing(f"needs a Docker engine: {reason}")


def busybox_static() -> Path:
    """Debian's busybox-static binary. Raises LookupError with the reason when there is none."""
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.exists():
            if b"ld-linux" in candidate.read_bytes()[:65536]:
                raise LookupError(f"{candidate} is linked dynamically; install busybox-static")
            return candidate
    raise LookupError("no /bin/busybox; install busybox-static")


def busybox_rootfs(busybox: Path) -> bytes:
    """A root filesystem as a tar: busybox, a symlink per applet, and the folders a shell expects."""
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for folder, mode in (("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755), ("root", 0o700)):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        entry = tarfile.TarInfo("etc/passwd")
        entry.size = len(passwd)
        tar.addfile(entry, io.BytesIO(passwd))
    return out.getvalue()


def start_dockerd(root: Path) -> subprocess.Popen[bytes]:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    with open(root / "dockerd.log", "ab") as log:
        return subprocess.Popen(
            [
                dockerd,
                f"--host=unix://{root}/docker.sock",
                f"--data-root={root}/data",
                f"--exec-root={root}/exec",
                f"--pidfile={root}/dockerd.pid",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_engine(process: subprocess.Popen[bytes], socket_url: str, root: Path) -> docker.DockerClient:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise EngineUnavailable(
                f"dockerd exited with {process.returncode}: {_tail(root / 'dockerd.log')}"
            )
        try:
            return connect(socket_url)
        except EngineUnavailable:
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"dockerd did not answer in {START_TIMEOUT_S:.0f} s") from None
            time.sleep(0.1)


def stop_dockerd(process: subprocess.Popen[bytes], client: docker.DockerClient | None) -> None:
    """Remove every container (so dockerd has nothing to wait for), then stop it: SIGTERM, then SIGKILL."""
    if client is not None:
        try:
            for container in client.api.containers(all=True):
                client.api.remove_container(container["Id"], force=True)
        finally:
            client.close()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def unmount_under(root: Path) -> None:
    """dockerd leaves mounts (its network namespace) in its exec root; take them away before deleting it."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in reversed(points):
        if point.startswith(f"{root}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _tail(path: Path, max_chars: int = 400) -> str:
    try:
        return " ".join(path.read_text(errors="replace")[-max_chars:].split())
    except OSError:
        return ""


@pytest.fixture(scope="session", name="docker_engine")
def docker_engine_fixture() -> Iterator[Engine]:
    if os.geteuid() != 0:
        unavailable("dockerd must run as root here (no rootless set-up in the tests)")
    if not (shutil.which("dockerd") or Path("/usr/sbin/dockerd").exists()):
        unavailable("no dockerd; install docker.io")
    try:
        busybox = busybox_static()
    except LookupError as exc:
        unavailable(str(exc))
    root = Path(tempfile.mkdtemp(prefix="gpuctl-dockerd-"))  # short: unix socket paths have a length limit
    process = start_dockerd(root)
    client = None
    try:
        try:
            client = wait_for_engine(process, f"unix://{root}/docker.sock", root)
        except EngineUnavailable as exc:
            unavailable(str(exc))
        repository, tag = IMAGE.split(":")
        client.api.import_image_from_data(busybox_rootfs(busybox), repository=repository, tag=tag)
        yield Engine(f"unix://{root}/docker.sock", client, IMAGE, root)
    finally:
        stop_dockerd(process, client)
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
