"""The packages, end to end: packaging/build makes the .deb and .rpm files and the offline bundle; in a container
made from a clean Debian 12 root file system, with no network, the bundle's install.sh installs them, the
coordinator runs (its unit's ExecStart, as its User=), an agent joins with simulated GPUs and runs a job; both
are upgraded to a rebuilt, higher version while a job runs (the job finishes); remove keeps config and state,
purge deletes them. The .rpm files are read with `rpm -qp`; every ELF file in the packages is read with
`objdump -T` for the glibc it needs (RHEL 9's 2.34 at most).

Heavy parts are cached outside the repository (packaging/build's venv and bundles, the root file system tarball
under /var/cache/gpuctl-test), so a rerun costs the nfpm step and the container. Under CI a missing tool fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.docker_engine import Engine
from tests.real_parts import part_missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("GPUCTL_TEST_CACHE", "/var/cache/gpuctl-test"))
MIRROR = os.environ.get("GPUCTL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE, VARIANT = "bookworm", "minbase"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
NEXT_VERSION = f"{VERSION}.1"  # higher for dpkg and rpm alike
URL = "https://localhost:8443"


def missing(what: str) -> None:
    part_missing(f"packaging test needs {what}")


def need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        missing(f"{tool} (Debian package {package})")
    assert found is not None
    return found


def rootfs_tarball() -> Path:
    """A clean Debian 12 (minbase) root file system as a tar, made by debootstrap from Debian's archive once
    and kept under CACHE, keyed by the suite, the variant, the mirror and debootstrap's version."""
    debootstrap = need("debootstrap", "debootstrap")
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True
    )
    key = hashlib.sha256(f"{SUITE} {VARIANT} {MIRROR} {version.stdout}".encode()).hexdigest()[:16]
    tarball = CACHE / f"debian-{SUITE}-{VARIANT}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"rootfs-{key}.tmp"
    shutil.rmtree(target, ignore_errors=True)
    run = subprocess.run(
        [debootstrap, f"--variant={VARIANT}", SUITE, str(target), MIRROR], capture_output=True, text=True
    )
    if run.returncode != 0:
        missing(f"a Debian root file system (debootstrap failed: {run.stderr.strip()[-500:]})")
    subprocess.run(["tar", "-C", str(target), "-cf", f"{tarball}.tmp", "."], check=True)
    os.replace(f"{tarball}.tmp", tarball)
    shutil.rmtree(target, ignore_errors=True)
    return tarball


@dataclass
class Container:
    docker: list[str]
    name: str

    def sh(self, script: str, user: str = "root", check: bool = True, timeout_s: float = 300) -> str:
        run = subprocess.run(
            [*self.docker, "exec", "-u", user, self.name, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if check and run.returncode != 0:
            raise AssertionError(f"`{script}` failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
        return run.stdout

    def start(self, command: str, pid_file: str, log: str, user: str = "root") -> None:
        """A daemon in the background, as systemd would start it (its pid kept for stopping it)."""
        script = f"echo $$ > {pid_file}; exec {command} >>{log} 2>&1"
        subprocess.run([*self.docker, "exec", "-d", "-u", user, self.name, "sh", "-c", script], check=True)

    def stop(self, pid_file: str) -> None:
        """SIGTERM to the main process only: what KillMode=process does."""
        self.sh(f"pid=$(cat {pid_file}); kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.2; done")

    def wait(self, script: str, what: str, timeout_s: float = 120, user: str = "root") -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            run = subprocess.run(
                [*self.docker, "exec", "-u", user, self.name, "sh", "-c", script],
                capture_output=True,
                text=True,
            )
            if run.returncode == 0:
                return run.stdout
            if time.monotonic() > deadline:
                logs = self.sh("tail -n 40 /var/log/gpuctl-*.log", check=False)
                raise AssertionError(f"timed out waiting for {what}: {run.stderr}\n{logs}")
            time.sleep(0.5)


def exec_start(unit: str) -> tuple[str, str]:
    """The unit's ExecStart line and its User= (root when it names none)."""
    fields = dict(
        line.split("=", 1) for line in (ROOT / "systemd" / unit).read_text().splitlines() if "=" in line
    )
    return fields["ExecStart"], fields.get("User", "root")


@dataclass
class Packages:
    """The packages at the project's version, and the build of the same sources at a higher one, which runs
    while the tests use the first (it is only needed for the upgrade)."""

    first: Path
    next_dir: Path
    next_build: subprocess.Popen[bytes]

    def wait_next(self) -> None:
        """Until the packages at NEXT_VERSION are built."""
        _finished(self.next_build, self.next_dir)


def _build(out: Path, version: str) -> subprocess.Popen[bytes]:
    out.mkdir()  # now: the container mounts it before the build fills it
    with open(f"{out}.log", "wb") as log:
        command = ["bash", str(ROOT / "packaging" / "build"), "--version", version, str(out)]
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _finished(build: subprocess.Popen[bytes], out: Path) -> None:
    build.wait(timeout=1500)
    assert build.returncode == 0, Path(f"{out}.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Packages]:
    """The first build alone (it fills packaging/build's cache: the second then only runs nfpm), the second
    in the background."""
    base = tmp_path_factory.mktemp("packages")
    first, second = base / VERSION, base / NEXT_VERSION
    _finished(_build(first, VERSION), first)
    next_build = _build(second, NEXT_VERSION)
    try:
        yield Packages(first, second, next_build)
    finally:
        if next_build.poll() is None:
            next_build.kill()
            next_build.wait()


@pytest.mark.timeout(1800)
def test_install_run_upgrade_remove_purge_offline(packages: Packages, docker_engine: Engine) -> None:
    first, second = packages.first, packages.next_dir
    docker = [need("docker", "docker.io"), "-H", docker_engine.socket]
    tarball = rootfs_tarball()
    image = f"gpuctl-test/debian12:{tarball.stem.rsplit('-', 1)[-1]}"
    if subprocess.run([*docker, "image", "inspect", image], capture_output=True).returncode != 0:
        subprocess.run([*docker, "import", str(tarball), image], check=True, capture_output=True)
    name = f"gpuctl-pkg-{os.getpid()}"
    started = subprocess.run(
        # A writable cgroup file system, as the agent (root on a host) has (each job gets a cgroup); no network.
        [*docker, "run", "-d", "--init", "--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined",
         "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--network", "none", "--name", name, "--hostname", "gpu-host-1",
         "-v", f"{first}:/pkgs/old:ro", "-v", f"{second}:/pkgs/new:ro", image, "sleep", "infinity"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    box = Container(docker, name)
    try:
        _install_and_run(box)
        packages.wait_next()  # built meanwhile
        _upgrade_while_a_job_runs(box)
        _remove_then_purge(box)
    finally:
        subprocess.run([*docker, "rm", "-f", name], capture_output=True)


def _install_and_run(box: Container) -> None:
    box.sh(f"cd /tmp && tar xzf /pkgs/old/gpuctl-{VERSION}-amd64.tar.gz")
    box.sh(f"/tmp/gpuctl-{VERSION}-amd64/install.sh agent coordinator cli")
    assert box.sh("gpuctl --version").strip() == f"gpuctl {VERSION}"
    assert box.sh("stat -c %U:%a /var/lib/gpuctl-coordinator").strip() == "gpuctl:700"
    coordinator, coordinator_user = exec_start("gpuctl-coordinator.service")
    assert coordinator_user == "gpuctl"
    init = box.sh("gpuctl-coordinator init", user=coordinator_user)
    token = re.search(r"admin token:\s+(\S+)", init).group(1)  # type: ignore[union-attr]
    pin = re.search(r"CA pin:\s+(\S+)", init).group(1)  # type: ignore[union-attr]
    box.start(coordinator, "/tmp/coordinator.pid", "/tmp/gpuctl-coordinator.log", user=coordinator_user)
    box.wait(f"gpuctl login {URL} --token {token} --ca-pin {pin}", "the coordinator to listen")
    join = box.sh("gpuctl token create --fleet dc1 --ttl 1h").strip()
    box.sh(f"printf 'coordinator: {URL}\\nsimulate: 2xH100:80GB\\n' > /etc/gpuctl/agent.yaml")
    joined = box.sh(f"gpuctl-agent join {join} --no-run", timeout_s=120)  # what the README tells operators
    assert (
        "joined as host" in joined and box.sh("test -s /var/lib/gpuctl-agent/pki/agent.pem; echo $?") == "0\n"
    )
    agent, _ = exec_start("gpuctl-agent.service")  # then `systemctl enable --now gpuctl-agent`
    box.start(agent, "/run/gpuctl-agent.pid", "/var/log/gpuctl-agent.log")
    box.wait("gpuctl hosts --json | grep -q '\"ready\"'", "the host to be ready")
    job = json.loads(box.sh("gpuctl submit --json -- echo hello from the package"))
    _wait_status(box, job["id"], "done")
    assert "hello from the package" in box.sh(f"gpuctl logs {job['id']}")


def _job_status(box: Container, job_id: str) -> str:
    jobs = json.loads(box.sh("gpuctl ps -a --json"))
    return next(j["status"] for j in jobs if j["id"] == job_id)


def _wait_status(box: Container, job_id: str, status: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (now := _job_status(box, job_id)) != status:
        if time.monotonic() > deadline or now in ("failed", "stopped", "lost"):
            logs = box.sh("tail -n 40 /var/log/gpuctl-agent.log /tmp/gpuctl-coordinator.log", check=False)
            raise AssertionError(f"job {job_id} is {now}, not {status}:\n{logs}")
        time.sleep(0.5)


def _upgrade_while_a_job_runs(box: Container) -> None:
    job = json.loads(box.sh("gpuctl submit --json -- sh -c 'sleep 15; echo outlived the upgrade'"))
    _wait_status(box, job["id"], "running")
    box.sh(
        "apt-get install -y /pkgs/new/gpuctl-agent_*.deb /pkgs/new/gpuctl-coordinator_*.deb /pkgs/new/gpuctl_*.deb"
    )
    # What the postinst's `systemctl try-restart` does under systemd: stop the main process only, start anew.
    coordinator, coordinator_user = exec_start("gpuctl-coordinator.service")
    agent, _ = exec_start("gpuctl-agent.service")
    box.stop("/tmp/coordinator.pid")
    box.start(coordinator, "/tmp/coordinator.pid", "/tmp/gpuctl-coordinator.log", user=coordinator_user)
    box.stop("/run/gpuctl-agent.pid")
    box.wait("gpuctl ps -a --json", "the upgraded coordinator to listen")  # it may still be starting
    assert _job_status(box, job["id"]) == "running"
    box.start(agent, "/run/gpuctl-agent.pid", "/var/log/gpuctl-agent.log")
    assert box.sh("dpkg-query -W -f='${Version}' gpuctl-agent") == f"{NEXT_VERSION}-1"
    assert box.sh("gpuctl --version").strip() == f"gpuctl {NEXT_VERSION}"
    _wait_status(box, job["id"], "done")
    assert "outlived the upgrade" in box.sh(f"gpuctl logs {job['id']}")


def _remove_then_purge(box: Container) -> None:
    box.stop("/run/gpuctl-agent.pid")
    box.stop("/tmp/coordinator.pid")
    box.sh("apt-get remove -y gpuctl-agent gpuctl-coordinator")
    box.sh("test ! -e /usr/bin/gpuctl-agent && test ! -e /usr/bin/gpuctl-coordinator")
    kept = [
        "/var/lib/gpuctl-agent/pki/agent.pem",
        "/var/lib/gpuctl-coordinator/coordinator.db",
        "/etc/gpuctl/agent.yaml",
        "/etc/gpuctl/coordinator.yaml",
    ]
    box.sh(" && ".join(f"test -e {path}" for path in kept))
    assert "coordinator: " in box.sh("cat /etc/gpuctl/agent.yaml")  # the operator's edit survives
    box.sh("apt-get purge -y gpuctl-agent gpuctl-coordinator")
    box.sh(
        "test ! -e /var/lib/gpuctl-agent && test ! -e /var/lib/gpuctl-coordinator && test ! -e /etc/gpuctl/agent.yaml"
    )


def test_rpm_metadata_files_and_scripts(packages: Packages) -> None:
    rpm = need("rpm", "rpm")
    first = packages.first

    def query(package: str, *args: str) -> str:
        (path,) = first.glob(f"{package}-{VERSION}-1.x86_64.rpm")
        return subprocess.run(
            [rpm, "-qp", *args, str(path)], capture_output=True, text=True, check=True
        ).stdout

    for package in ("gpuctl", "gpuctl-agent", "gpuctl-coordinator"):
        assert (
            query(package, "--qf", "%{NAME} %{VERSION} %{ARCH} %{LICENSE}")
            == f"{package} {VERSION} x86_64 Apache-2.0"
        )
        assert "python" not in query(package, "--requires").lower()  # it carries its own
    agent = query("gpuctl-agent", "--list").split()
    assert {
        "/usr/bin/gpuctl-agent",
        "/usr/lib/systemd/system/gpuctl-agent.service",
        "/opt/gpuctl/agent/gpuctl-agent",
    } <= set(agent)
    assert query("gpuctl-agent", "--configfiles").split() == ["/etc/gpuctl/agent.yaml"]
    assert query("gpuctl-coordinator", "--configfiles").split() == ["/etc/gpuctl/coordinator.yaml"]
    scripts = query("gpuctl-coordinator", "--scripts")
    assert "useradd --system" in scripts and "try-restart gpuctl-coordinator" in scripts
    assert "try-restart gpuctl-agent" in query("gpuctl-agent", "--scripts")


def _glibc_floor_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("glibc_floor", ROOT / "packaging" / "glibc_floor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# RHEL/Rocky 9's glibc: the oldest of the supported distributions (Debian 12: 2.36, Ubuntu 22.04: 2.35).
GLIBC_CEILING = (2, 34)
# What every supported distribution has installed (glibc; libstdc++ and libgcc_s, which apt and dnf link).
HOST_LIBRARIES = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1",
    "ld-linux-x86-64.so.2", "libstdc++.so.6", "libgcc_s.so.1",
    "libresolv.so.2",  # glibc's too: psycopg's libpq and its Kerberos and LDAP libraries need it
}  # fmt: skip


def test_glibc_floor_of_every_elf_file_in_the_packages(packages: Packages, tmp_path: Path) -> None:
    """The highest GLIBC_x.y symbol version that any ELF file in the three packages requires (`objdump -T`) is
    RHEL 9's or lower, and the libraries they take from the host are ones every supported distribution has."""
    objdump = need("objdump", "binutils")
    dpkg_deb = need("dpkg-deb", "dpkg")
    first = packages.first
    glibc_floor = _glibc_floor_module()
    for package in ("gpuctl", "gpuctl-agent", "gpuctl-coordinator"):
        (deb,) = first.glob(f"{package}_{VERSION}-1_amd64.deb")
        subprocess.run([dpkg_deb, "-x", str(deb), str(tmp_path)], check=True)
    opt = tmp_path / "opt" / "gpuctl"
    assert sorted(p.name for p in opt.iterdir()) == ["agent", "cli", "coordinator"]
    elf = glibc_floor.elf_files(opt)
    assert any(p.name.startswith("libpython3.11") for p in elf) and len(elf) > 20
    version, where = glibc_floor.floor(opt, objdump)
    print(f"glibc floor: {glibc_floor.dotted(version)} (set by {where})")
    assert version <= GLIBC_CEILING, f"{where} needs glibc {glibc_floor.dotted(version)}"
    assert glibc_floor.from_host(opt, objdump) <= HOST_LIBRARIES


def test_offline_bundle_checksums(packages: Packages, tmp_path: Path) -> None:
    first = packages.first
    with tarfile.open(first / f"gpuctl-{VERSION}-amd64.tar.gz") as bundle:
        bundle.extractall(tmp_path, filter="data")
    folder = tmp_path / f"gpuctl-{VERSION}-amd64"
    sums = dict(reversed(line.split("  ", 1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert len(sums) == 7 and "install.sh" in sums
    for file, digest in sums.items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
