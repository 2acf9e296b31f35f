"""A real PostgreSQL for the tests: Debian's server, initdb'd into a temporary folder, listening on a Unix
socket in that folder only (no TCP port to collide on between pytest-xdist workers or with a system server).

`postgres_server` starts one server per worker for the session; `postgres_url` gives each test a fresh
database on it, as the URL a coordinator takes (`database: postgresql:///NAME?host=DIR&user=postgres`).
The server refuses to run as root, so under root it runs as Debian's `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.real_parts import part_missing

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&user={self.user}"

    def create_database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def client_tool(name: str) -> Path:
    """A client program of the tests' server's version (`pg_dump`, `pg_restore`)."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / name).exists():
        part_missing(f"PostgreSQL's {name} is missing: scripts/test installs Debian's postgresql")
    return bin_dir / name


def _as_server_user() -> tuple[list[str], str]:
    """The command prefix that runs as the server's owner, and that owner's name."""
    if os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid()).pw_name
    return ["runuser", "-u", "postgres", "--"], "postgres"


def _accepts(server: PostgresServer) -> bool:
    import psycopg

    try:
        psycopg.connect(server.url(), connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def missing_reason() -> str | None:
    """Why no server can start here, or None."""
    if _bin_dir() is None:
        return "PostgreSQL's initdb is missing: scripts/test installs Debian's postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is missing: pip install -e '.[test]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "PostgreSQL's `postgres` user is missing: scripts/test installs Debian's postgresql"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if reason := missing_reason():
        part_missing(reason)
    with running_postgres() as server:
        yield server


@contextlib.contextmanager
def running_postgres(durable: bool = False) -> Iterator[PostgresServer]:
    """A server for as long as the block runs. A test's skips fsync (its data dies with the run); the
    bench's is `durable`, as the SQLite it is compared with is."""
    bin_dir = _bin_dir()
    assert bin_dir is not None, missing_reason()
    prefix, owner = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="gpuctl-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if prefix:
        shutil.chown(root, owner)
        shutil.chown(sockets, owner)
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            owner,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    server_log = open(root / "server.log", "wb")  # noqa: SIM115 (the server writes it until it ends)
    server = subprocess.Popen(
        [
            *prefix,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=",
            *([] if durable else ["-c", "fsync=off"]),
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=server_log,
    )
    ready = PostgresServer(sockets, owner)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _accepts(ready):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server_log.close()
            raise RuntimeError(f"PostgreSQL did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.05)
    try:
        yield ready
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server_log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the worker's server, for this test alone."""
    return postgres_server.create_database()
