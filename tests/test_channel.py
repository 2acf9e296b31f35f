"""Into running jobs over the agents' own channel: `gpuctl exec` (pipes and a terminal), `gpuctl
port-forward`, who may, the audit log, and a misbehaving agent. A real coordinator and real agents with
plain-process jobs, real TLS, real processes and sockets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cli.api import ApiError
from cli.config import CliConfig
from cli.remote import ExecRequest, Forward, exec_stream, listen
from tests.harness import Cluster, child_pid, cluster

pytestmark = pytest.mark.timeout(120)

SLEEPER = "name: sleeper\ncommands: ['echo ready', 'sleep 600']"


class Output:
    def __init__(self) -> None:
        self.by_fd: dict[int, bytes] = {1: b"", 2: b""}
        self.changed = asyncio.Event()

    def __call__(self, fd: int, data: bytes) -> None:
        self.by_fd[fd] += data
        self.changed.set()

    async def wait_for(self, text: str) -> None:
        async with asyncio.timeout(30):
            while text not in self.out:
                self.changed.clear()
                await self.changed.wait()

    @property
    def out(self) -> str:
        return self.by_fd[1].decode()

    @property
    def err(self) -> str:
        return self.by_fd[2].decode()


async def _running(c: Cluster, yaml_text: str = SLEEPER) -> str:
    job = await c.submit(yaml_text)
    await c.wait_for(job.id, "running")
    return job.id


async def _exec(c: Cluster, request: ExecRequest, stdin: bytes | None = None) -> tuple[int, Output]:
    output = Output()
    queue: asyncio.Queue[bytes] | None = None
    if stdin is not None:
        queue = asyncio.Queue()
        queue.put_nowait(stdin)
        queue.put_nowait(b"")
    code = await exec_stream(c.api.config, request, output, queue)
    return code, output


@pytest.fixture
async def one_host() -> AsyncIterator[Cluster]:
    async with cluster() as c:
        c.start_agent("host-a", "2xH100:80GB")
        yield c


async def test_exec_runs_as_the_job_in_its_folder_with_its_env_and_returns_the_exit_code(
    one_host: Cluster,
) -> None:
    c = one_host
    job_id = await _running(c, "name: envjob\nenv: [MARK=from-the-spec]\ncommands: ['sleep 600']")
    script = 'echo "$MARK $GPUCTL_JOB_ID $(id -u) $(pwd)"; echo oops >&2; exit 7'
    code, output = await _exec(c, ExecRequest(job_id, ("sh", "-c", script)))
    assert code == 7
    mark, seen_job, uid, cwd = output.out.split()
    assert (mark, seen_job) == ("from-the-spec", job_id)
    alloc_dir = next(c.root.glob("*/allocs/*"))
    assert cwd == str(alloc_dir / "work")
    assert uid == await _job_uid(alloc_dir) != "0"
    assert output.err == "oops\n"

    code, output = await _exec(c, ExecRequest(job_id, ("cat",)), stdin=b"hello\nthrough stdin\n" * 1000)
    assert (code, output.out) == (0, "hello\nthrough stdin\n" * 1000)


async def _job_uid(alloc_dir: Path) -> str:
    """The uid the job's own processes run as, as the kernel sees it."""
    pid = await child_pid(alloc_dir)
    status = Path(f"/proc/{pid}/status").read_text()
    return re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)  # type: ignore[union-attr]


async def test_exec_with_a_terminal_sees_a_pty_and_its_resizes(one_host: Cluster) -> None:
    c = one_host
    job_id = await _running(c)
    code, output = await _exec(
        c, ExecRequest(job_id, ("sh", "-c", "tty; stty size"), tty=True, rows=33, cols=101)
    )
    assert code == 0
    lines = output.out.replace("\r", "").split("\n")
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]), output.out
    assert lines[1] == "33 101"

    # a resize reaches the command: it prints the size it has after a SIGWINCH
    output = Output()
    stdin: asyncio.Queue[bytes] = asyncio.Queue()
    resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    script = "trap 'stty size; exit 0' WINCH; echo waiting; while :; do sleep 0.05; done"
    request = ExecRequest(job_id, ("sh", "-c", script), tty=True, rows=10, cols=20)
    run = asyncio.create_task(exec_stream(c.api.config, request, output, stdin, resizes))
    await output.wait_for("waiting")
    resizes.put_nowait((44, 132))
    assert await asyncio.wait_for(run, 30) == 0
    assert "44 132" in output.out


async def test_a_member_of_another_project_gets_403_and_every_exec_is_audited(one_host: Cluster) -> None:
    c = one_host
    job_id = await _running(c)
    from shared.wire import UserCreate

    await asyncio.to_thread(c.api.create_project, "other")
    created = await asyncio.to_thread(c.api.create_user, UserCreate(name="eve", project="other"))
    outsider = CliConfig(c.api.config.url, created.token, c.api.config.ca_file)
    with pytest.raises(ApiError, match="only members of the job's project"):
        await exec_stream(outsider, ExecRequest(job_id, ("true",)), Output())
    said: list[str] = []
    servers = await listen(outsider, job_id, [Forward(0, 80)], say=said.append)
    assert await _http_get(servers[0].sockets[0].getsockname()[1], "/") == b""
    assert said[1:] == ["port 80: job: only members of the job's project, and admins, may reach into it"]
    servers[0].close()

    code, _ = await _exec(c, ExecRequest(job_id, ("sh", "-c", "exit 3")))
    assert code == 3
    entries = await asyncio.to_thread(c.api.audit, job_id)
    assert [(e.who, e.job_id, e.command, e.exit_code) for e in entries] == [
        ("admin", job_id, ["sh", "-c", "exit 3"], 3)
    ]
    assert entries[0].ended_at is not None and entries[0].ended_at >= entries[0].at


async def _http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    body = await reader.read()
    writer.close()
    return body
