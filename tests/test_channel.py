"""Into running jobs over the agents' own channel: `gpuctl exec` (pipes and a terminal), `gpuctl
port-forward`, who may, the audit log, and a misbehaving agent. A real coordinator and real agents with
plain-process jobs, real TLS, real processes and sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.streams import Stream
from cli.api import ApiError
from cli.config import CliConfig
from cli.remote import LOST_EXIT_CODE, ExecRequest, Forward, exec_stream, listen
from cli.wsclient import connect
from coordinator import api_channel
from coordinator.api_channel import CHANNELS
from coordinator.channels import AgentChannel, NoChannel, RelayStream
from shared import constants as C
from shared import tls_contexts as tls
from shared.channel import (
    MAX_DATA_BYTES,
    MAX_STREAMS_PER_AGENT,
    WINDOW_BYTES,
    BadFrame,
    Data,
    Eof,
    ExecOpen,
    Open,
    RecvWindow,
    Resize,
    SendCredit,
    TcpOpen,
    decode_to_agent,
    encode,
)
from tests.harness import Cluster, child_pid, cluster
from tests.test_cli import GPUCTL, ROOT

pytestmark = pytest.mark.timeout(120)

SLEEPER = "name: sleeper\ncommands: ['echo ready', 'sleep 600']"


class Output:
    def __init__(self) -> None:
        self.by_fd: dict[int, bytes] = {1: b"", 2: b""}
        self.changed = asyncio.Event()

    async def __call__(self, fd: int, data: bytes) -> None:
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


async def test_the_jobs_environment_reaches_the_command_not_the_helper_that_runs_as_root(
    one_host: Cluster,
) -> None:
    """exec's helper runs as root until it becomes the job's user: the job's LD_PRELOAD or LD_LIBRARY_PATH
    (a member writes the spec's env) would run a member's code as root in it. LD_DEBUG stands for them here:
    the dynamic loader obeys it as it would them, and says which program it loads."""
    c = one_host
    job_id = await _running(c, "name: envjob\nenv: [LD_DEBUG=files]\ncommands: ['sleep 600']")
    code, output = await _exec(c, ExecRequest(job_id, ("sh", "-c", 'echo "$LD_DEBUG"')))
    assert (code, output.out) == (0, "files\n")  # the command has it
    assert "libpython" not in output.err, output.err[:500]  # the helper, the agent's Python, did not


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
    from cli.api import Api

    with pytest.raises(ApiError, match="this needs an admin token"):  # nor read who reached into jobs
        await asyncio.to_thread(Api(outsider).audit, None, 10)

    code, _ = await _exec(c, ExecRequest(job_id, ("sh", "-c", "exit 3")))
    assert code == 3
    entries = await asyncio.to_thread(c.api.audit, job_id)
    assert [(e.who, e.job_id, e.command, e.exit_code) for e in entries] == [
        ("admin", job_id, ["sh", "-c", "exit 3"], 3)
    ]
    assert entries[0].ended_at is not None and entries[0].ended_at >= entries[0].at


async def test_a_member_reaches_their_own_job_of_a_name_another_project_uses_too(one_host: Cluster) -> None:
    """A job's name is unique within nothing: `gpuctl exec NAME` finds the caller's own job of that name,
    as `gpuctl logs NAME` does, even when another project's is newer."""
    c = one_host
    from cli.api import Api
    from shared.spec import parse_spec
    from shared.wire import UserCreate

    members = []
    for project in ("alpha", "beta"):
        await asyncio.to_thread(c.api.create_project, project)
        created = await asyncio.to_thread(c.api.create_user, UserCreate(name=f"{project}-1", project=project))
        members.append(CliConfig(c.api.config.url, created.token, c.api.config.ca_file))
    jobs = []
    for config in members:  # beta's job is the newer
        spec = parse_spec("name: twin\ncommands: ['sleep 600']", environ=os.environ)
        jobs.append(await asyncio.to_thread(Api(config).submit, spec))
        await c.wait_for(jobs[-1].id, "running")
    output = Output()
    code = await exec_stream(members[0], ExecRequest("twin", ("sh", "-c", "echo $GPUCTL_JOB_ID")), output)
    assert (code, output.out, output.err) == (0, f"{jobs[0].id}\n", "")


async def test_exec_is_refused_in_one_line_for_a_node_the_job_lacks_and_a_job_that_ended(
    one_host: Cluster,
) -> None:
    c = one_host
    job_id = await _running(c)
    for node, error in (
        (1, f"node: job {job_id} has 1 node(s); no node 1"),
        (10**6, "node: 1000000 is over the limit of"),
    ):
        with pytest.raises(ApiError, match=re.escape(error)):
            await exec_stream(c.api.config, ExecRequest(job_id, ("true",), node=node), Output())
    await asyncio.to_thread(c.api.stop, job_id)
    await c.wait_for(job_id, "stopped")
    with pytest.raises(ApiError, match=rf"^job {job_id} \(sleeper\) is stopped, not running$"):
        await exec_stream(c.api.config, ExecRequest(job_id, ("true",)), Output())
    said: list[str] = []
    servers = await listen(c.api.config, job_id, [Forward(0, 80)], say=said.append)
    assert await _http_get(servers[0].sockets[0].getsockname()[1], "/") == b""
    servers[0].close()
    assert said[1:] == [f"port 80: job {job_id} (sleeper) is stopped, not running"]


async def _http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    body = await reader.read()
    writer.close()
    return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _httpd_job(port: int, big_bytes: int = 0, seq_to: int = 0) -> str:
    """A plain-process job serving its work dir with busybox's httpd: `small` (known bytes), and `big`
    (`big_bytes` zeros, or the numbers to `seq_to`, one a line)."""
    make_big = "true"
    if big_bytes:
        make_big = f"head -c {big_bytes} /dev/zero > big"
    elif seq_to:
        make_big = f"seq 1 {seq_to} > big"
    return (
        "name: web\ncommands:\n"
        "  - for i in $(seq 1 2000); do echo line $i; done > small\n"
        f"  - {make_big}\n"
        f"  - exec busybox httpd -f -p 127.0.0.1:{port} -h .\n"
    )


SMALL = "".join(f"line {i}\n" for i in range(1, 2001)).encode()


async def _get(port: int, path: str) -> bytes:
    """The body of an HTTP/1.0 GET through 127.0.0.1:`port`."""
    response = await _http_get(port, path)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head[:200]
    return body


async def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)
    raise AssertionError(what)


async def test_port_forward_carries_many_connections_at_once(one_host: Cluster) -> None:
    c = one_host
    port = _free_port()
    job_id = await _running(c, _httpd_job(port))
    said: list[str] = []
    servers = await listen(c.api.config, job_id, [Forward(0, port)], say=said.append)
    local = servers[0].sockets[0].getsockname()[1]
    assert said == [f"Forwarding from 127.0.0.1:{local} -> {port}"]
    await _until(lambda: _answers(port), "the job's httpd to listen")
    bodies = await asyncio.gather(*(_get(local, "/small") for _ in range(50)))
    assert all(body == SMALL for body in bodies)
    assert said[1:] == []
    # a port nobody listens on: the connection closes, and the reason is said
    dead = _free_port()
    servers += await listen(c.api.config, job_id, [Forward(0, dead)], say=said.append)
    assert await _http_get(servers[-1].sockets[0].getsockname()[1], "/") == b""
    assert said[-1] == f"port {dead}: no process of the job listens on this port", said
    for server in servers:
        server.close()


async def test_port_forward_reaches_only_the_jobs_own_listening_sockets(one_host: Cluster) -> None:
    """Every job of a host shares its loopback: a member of one project must not reach, through a job of
    theirs, another project's job's server on that host, or what the host itself serves on its loopback."""
    c = one_host
    from cli.api import Api
    from shared.spec import parse_spec
    from shared.wire import UserCreate

    await asyncio.to_thread(c.api.create_project, "other")
    created = await asyncio.to_thread(c.api.create_user, UserCreate(name="bob", project="other"))
    other = Api(CliConfig(c.api.config.url, created.token, c.api.config.ca_file))
    theirs_port, mine_port = _free_port(), _free_port()
    theirs = await asyncio.to_thread(other.submit, parse_spec(_httpd_job(theirs_port), environ=os.environ))
    mine = await _running(c, _httpd_job(mine_port))
    await c.wait_for(theirs.id, "running")
    await _until(lambda: _answers(theirs_port) and _answers(mine_port), "both httpds to listen")
    with socket.socket() as hosts_own:  # a server of the host's (the agent's, sshd, ...) on its loopback
        hosts_own.bind(("127.0.0.1", 0))
        hosts_own.listen()
        said: list[str] = []
        forwards = [Forward(0, theirs_port), Forward(0, hosts_own.getsockname()[1]), Forward(0, mine_port)]
        servers = await listen(c.api.config, mine, forwards, say=said.append)
        ports = [server.sockets[0].getsockname()[1] for server in servers]
        assert await _http_get(ports[0], "/small") == b""
        assert await _http_get(ports[1], "/") == b""
        for server in servers[:2]:
            server.close()
        assert said[3:] == [
            f"port {theirs_port}: no process of the job listens on this port",
            f"port {hosts_own.getsockname()[1]}: no process of the job listens on this port",
        ]
        assert await _get(ports[2], "/small") == SMALL  # its own port still is
        servers[2].close()


async def test_a_job_with_no_cgroups_of_its_own_listens_through_the_tree_under_its_supervisor() -> None:
    """An agent that confines no job (not root) finds the job's sockets among its supervisor's descendants.
    A socket on an address that 127.0.0.1 does not reach is not the port's; nor does a job's IPv6-only
    [::]:PORT make another's 127.0.0.1:PORT the job's."""
    from agent.job_sockets import job_listens

    server = (
        "import os, socket, sys, time\n"
        "v6 = ':' in sys.argv[1]\n"
        "s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)\n"
        "if v6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
        "s.bind((sys.argv[1], 0))\n"
        "s.listen()\n"
        "os.write(1, f'{sys.argv[1]} {s.getsockname()[1]}\\n'.encode())  # one write: three share the pipe\n"
        "time.sleep(600)\n"
    )
    supervisor = await asyncio.create_subprocess_exec(
        "sh", "-c", 'for a in 127.0.0.1 127.0.0.2 ::; do python3 -c "$0" $a & done; wait', server,
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert supervisor.stdout is not None

    async def listens(port: int) -> bool:
        return await asyncio.to_thread(job_listens, supervisor.pid, [], port)

    try:
        lines = [(await supervisor.stdout.readline()).decode().split() for _ in range(3)]
        ports = {address: int(port) for address, port in lines}
        assert await listens(ports["127.0.0.1"])
        assert not await listens(ports["127.0.0.2"])
        with socket.socket() as outside:
            outside.bind(("127.0.0.1", 0))
            outside.listen()
            assert not await listens(outside.getsockname()[1])
        with socket.socket() as beside:  # the host's, on the port of the job's IPv6-only socket
            beside.bind(("127.0.0.1", ports["::"]))
            beside.listen()
            assert not await listens(ports["::"])
    finally:
        os.killpg(supervisor.pid, signal.SIGKILL)
        await supervisor.wait()


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_a_100_mb_download_is_not_held_by_the_coordinator(one_host: Cluster) -> None:
    """The reader stops reading: the coordinator holds at most one window of the stream, and the process
    (coordinator, agent and CLI together) does not grow by the download's size; then all of it arrives."""
    c = one_host
    port, size = _free_port(), 100 * 1000 * 1000
    job_id = await _running(c, _httpd_job(port, size))
    await _until(lambda: _answers(port), "the job's httpd to listen")
    servers = await listen(c.api.config, job_id, [Forward(0, port)], say=lambda line: None)
    rss_before = _rss_bytes()
    reader, writer = await asyncio.open_connection("127.0.0.1", servers[0].sockets[0].getsockname()[1])
    writer.write(b"GET /big HTTP/1.0\r\n\r\n")
    await _stalls_on_its_window(c, rss_before, size)
    code, output = await _exec(
        c, ExecRequest(job_id, ("echo", "alongside"))
    )  # the stalled stream holds no other
    assert (code, output.out) == (0, "alongside\n")
    received = 0
    while chunk := await reader.read(1 << 20):
        received += len(chunk)
    writer.close()
    assert received > size  # the body and the headers
    assert _rss_bytes() - rss_before < size // 4
    servers[0].close()


async def _stalls_on_its_window(c: Cluster, rss_before: int, size: int) -> None:
    """The coordinator's one stream stalls on a full window, and the process has not grown by a quarter of
    `size` (the answer's) since `rss_before`: a bounded relay holds its window, no more."""
    streams = _coordinator_streams(c)

    def stalled() -> bool:  # on a full window, or on memory a bounded relay never takes
        full = len(streams()) == 1 and streams()[0].window.held == WINDOW_BYTES
        return full or _rss_bytes() - rss_before >= size // 4

    await _until(stalled, "the stream to stall on its window")
    await asyncio.sleep(1.0)  # room for a relay that would buffer past its window to do so
    assert _rss_bytes() - rss_before < size // 4
    assert streams()[0].window.held == WINDOW_BYTES


def _coordinator_streams(c: Cluster) -> Callable[[], list[RelayStream]]:
    channels = c.coordinator.runner.app[CHANNELS]
    return lambda: [s for channel in channels.by_host.values() for s in channel.streams.values()]


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]


async def test_a_bad_frame_from_an_agent_closes_only_its_channel(one_host: Cluster) -> None:
    c = one_host
    job_id = await _running(c)
    rogue = c.agent_config("rogue", "1xH100:80GB")  # a real certificate of this cluster; no agent runs it
    context = tls.client_context(rogue.ca_file, rogue.cert_file, rogue.key_file)
    url = f"{c.coordinator.url}{C.AGENT_PREFIX}/channel"
    wrong_way = encode(Open(1, TcpOpen("a1", 22)))  # an agent may never open a stream
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for bad in (b"\x93\xa4junk", wrong_way, encode(Data(1, b"x")) + b"trailing"):
            async with session.ws_connect(url, headers={C.PROTOCOL_HEADER: C.PROTOCOL_VERSION}) as ws:
                await ws.send_bytes(bad)
                message = await ws.receive()
                assert message.type is aiohttp.WSMsgType.CLOSE, message
                assert ws.close_code == aiohttp.WSCloseCode.PROTOCOL_ERROR
    # the real agent's channel was never touched
    code, output = await _exec(c, ExecRequest(job_id, ("echo", "still here")))
    assert (code, output.out) == (0, "still here\n")


async def test_a_peer_past_its_window_breaks_the_protocol() -> None:
    """What closes a channel whose agent sends more than it was granted, or grants more than it got."""
    window = RecvWindow()
    window.received(WINDOW_BYTES)
    with pytest.raises(BadFrame, match="past its window"):
        window.received(1)
    credit = SendCredit()
    assert await credit.take(WINDOW_BYTES + 10) == WINDOW_BYTES
    credit.grant(100)
    with pytest.raises(BadFrame, match="past"):
        credit.grant(WINDOW_BYTES)


async def test_a_dropped_channel_ends_its_streams_with_the_reason_and_the_agent_comes_back(
    one_host: Cluster,
) -> None:
    c = one_host
    job_id = await _running(c)
    channels = c.coordinator.runner.app[CHANNELS]
    await _until(lambda: "host-a" in channels.by_host, "the agent's channel")
    marker = f"{os.getpid() % 1000 + 7000}"  # a sleep this test alone runs
    output = Output()
    request = ExecRequest(job_id, ("sh", "-c", f"echo started; exec sleep {marker}"))
    run = asyncio.create_task(exec_stream(c.api.config, request, output))
    await output.wait_for("started")
    await _until(lambda: _running_sleep(marker), "the command to run")
    old = channels.by_host["host-a"]
    await old.ws.close()
    assert await asyncio.wait_for(run, 30) == LOST_EXIT_CODE
    assert output.err.startswith("gpuctl exec: host host-a: channel dropped: "), output.err
    await _until(lambda: not _running_sleep(marker), "the cut command to be killed")
    await _until(lambda: channels.by_host.get("host-a") not in (None, old), "the agent to reconnect")
    code, output = await _exec(c, ExecRequest(job_id, ("echo", "again")))
    assert (code, output.out) == (0, "again\n")


async def test_a_cut_terminal_kills_what_its_shell_started_in_jobs_of_their_own(one_host: Cluster) -> None:
    """An interactive shell puts each job it starts in a process group of its own; when the stream is cut,
    those die with the shell, not only the shell's own group."""
    c = one_host
    job_id = await _running(c)
    marker = f"{os.getpid() % 1000 + 8000}"
    output = Output()
    stdin: asyncio.Queue[bytes] = asyncio.Queue()
    stdin.put_nowait(f"sleep {marker} &\necho st''arted\n".encode())
    request = ExecRequest(job_id, ("bash", "--norc", "-i"), tty=True)
    run = asyncio.create_task(exec_stream(c.api.config, request, output, stdin, asyncio.Queue()))
    await output.wait_for("started")
    await _until(lambda: _running_sleep(marker), "the background job to run")
    run.cancel()  # the user's connection goes
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await _until(lambda: not _running_sleep(marker), "the shell's background job to be killed")


async def test_a_user_who_leaves_while_the_command_reads_no_input_cuts_it(
    one_host: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's input fills the command's window (it reads none) and the coordinator's, and the CLI waits
    for credit with more in hand: the coordinator still reads the user's connection, sees them go, and
    kills the command."""
    c = one_host
    monkeypatch.setattr(api_channel, "HEARTBEAT_S", 1.0)
    job_id = await _running(c)
    marker = f"{os.getpid() % 1000 + 10000}"
    output = Output()
    stdin: asyncio.Queue[bytes] = asyncio.Queue()
    for _ in range(64):
        stdin.put_nowait(b"x" * 65536)  # 4 MiB: past the windows, the pipe and the sockets' buffers
    request = ExecRequest(job_id, ("sh", "-c", f"echo started; exec sleep {marker}"))
    run = asyncio.create_task(exec_stream(c.api.config, request, output, stdin))
    await output.wait_for("started")
    await _until(lambda: _running_sleep(marker), "the command to run")
    streams = _coordinator_streams(c)
    await _until(
        lambda: len(streams()) == 1 and streams()[0].user_window.held == WINDOW_BYTES,
        "the coordinator to hold a window of the user's input",
    )
    run.cancel()  # the user's connection goes
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await _until(lambda: not _running_sleep(marker), "the command to be killed", timeout_s=60)
    entries = await asyncio.to_thread(c.api.audit, job_id)  # and the audit log says how it ended
    assert len(entries) == 1 and entries[0].exit_code is None and entries[0].error, entries
    assert entries[0].ended_at is not None


async def test_a_user_whose_connection_is_dead_is_cut_by_the_heartbeat(
    one_host: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `gpuctl exec` that is stopped (SIGSTOP) answers no ping, as a user whose network died: the
    coordinator finds them gone, and kills the command, though the connection was never closed."""
    c = one_host
    monkeypatch.setattr(api_channel, "HEARTBEAT_S", 1.0)
    job_id = await _running(c)
    marker = f"{os.getpid() % 1000 + 11000}"
    script = f"echo started; exec sleep {marker}"
    process = await _gpuctl_process(c, "exec", job_id, "--", "sh", "-c", script)
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"started\n"
        await _until(lambda: _running_sleep(marker), "the command to run")
        process.send_signal(signal.SIGSTOP)
        await _until(lambda: not _running_sleep(marker), "the command to be killed", timeout_s=60)
    finally:
        process.kill()
        await process.wait()
    entries = await asyncio.to_thread(c.api.audit, job_id)
    assert len(entries) == 1 and entries[0].exit_code is None and entries[0].error, entries
    assert entries[0].ended_at is not None


PAUSE_S = 5.0  # five of the tests' heartbeats, each of which a paused reader must answer


async def test_a_reader_who_pauses_for_heartbeats_then_resumes_gets_the_whole_download(
    one_host: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port-forwarded download whose reader stops reading for several heartbeats: the connection is
    not cut, and every byte arrives once it reads again."""
    c = one_host
    monkeypatch.setattr(api_channel, "HEARTBEAT_S", 1.0)
    port = _free_port()
    job_id = await _running(c, _httpd_job(port, seq_to=3_000_000))
    await _until(lambda: _answers(port), "the job's httpd to listen")
    expected = _job_file(c, "big")
    said: list[str] = []
    servers = await listen(c.api.config, job_id, [Forward(0, port)], say=said.append)
    reader, writer = await asyncio.open_connection("127.0.0.1", servers[0].sockets[0].getsockname()[1])
    writer.write(b"GET /big HTTP/1.0\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    await asyncio.sleep(PAUSE_S)  # the reader pauses
    body = await reader.read()
    writer.close()
    servers[0].close()
    assert (len(body), _sha256(body)) == (len(expected), _sha256(expected))
    assert said[1:] == []


async def test_a_paused_reader_of_the_exec_commands_output_gets_all_of_it(
    one_host: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gpuctl exec JOB -- cat big | less`, the pager paused for several heartbeats: its output is whole."""
    c = one_host
    monkeypatch.setattr(api_channel, "HEARTBEAT_S", 1.0)
    port = _free_port()
    job_id = await _running(c, _httpd_job(port, seq_to=3_000_000))
    await _until(lambda: _answers(port), "the job to have written its files")
    expected = _job_file(c, "big")
    process = await _gpuctl_process(c, "exec", job_id, "--", "cat", "big")
    try:
        await asyncio.sleep(PAUSE_S)  # nobody reads its stdout meanwhile
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (process.returncode, err) == (0, b"")
    assert (len(out), _sha256(out)) == (len(expected), _sha256(expected))


async def test_an_exec_whose_command_reads_no_input_outlives_heartbeats_with_its_input_pending(
    one_host: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than a window of input that the command does not read holds the user's connection through
    several heartbeats: the command runs to its end."""
    c = one_host
    monkeypatch.setattr(api_channel, "HEARTBEAT_S", 1.0)
    job_id = await _running(c)
    script = f"echo started; sleep {PAUSE_S:g}; echo done"
    done = await _gpuctl(c, "exec", "-i", job_id, "--", "sh", "-c", script, stdin=b"x" * 4_000_000)
    assert done == (0, "started\ndone\n", "")


def _job_file(c: Cluster, name: str) -> bytes:
    """A file the one job wrote in its work dir."""
    return (next(c.root.glob("*/allocs/*/work")) / name).read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _running_sleep(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if cmdline.read_bytes() == f"sleep\0{marker}\0".encode():
                return True
    return False


def _cli_env(c: Cluster) -> dict[str, str]:
    """The environment of a `gpuctl` process that talks to the cluster as its admin."""
    config = c.root / "cli.json"
    config.write_text(
        json.dumps(
            {"url": c.api.config.url, "token": c.api.config.token, "ca_file": str(c.api.config.ca_file)}
        )
    )
    return dict(os.environ, GPUCTL_CONFIG=str(config))


async def _gpuctl_process(c: Cluster, *args: str) -> asyncio.subprocess.Process:
    """The real `gpuctl` command, in a process of its own, against the cluster; its stdio are pipes."""
    return await asyncio.create_subprocess_exec(
        *GPUCTL, *args, env=_cli_env(c), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _gpuctl(c: Cluster, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """The real `gpuctl` command, in a process of its own, against the cluster."""
    process = await _gpuctl_process(c, *args)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    finally:
        if process.returncode is None:  # a command that did not end: not left running after the test
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_commands_exec_and_port_forward_a_tasks_declared_ports(one_host: Cluster) -> None:
    c = one_host
    port = _free_port()
    job_id = await _running(c, _httpd_job(port) + f"ports: ['*:{port}']\n")
    done = await _gpuctl(c, "exec", job_id, "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert done == (5, "out\n", "err\n")
    done = await _gpuctl(c, "exec", "-i", job_id, "--", "wc", "-c", stdin=b"x" * 300_000)
    assert done == (0, "300000\n", "")
    assert (await _gpuctl(c, "exec", "nosuchjob", "--", "true"))[2] == "Error: no job 'nosuchjob'\n"
    code, out, _ = await _gpuctl(c, "audit", "--job", job_id)
    assert code == 0 and len(out.splitlines()) == 2, out
    assert re.search(rf"admin +default +{job_id} node 0  exit 0 +wc -c$", out.splitlines()[0]), out
    assert out.splitlines()[1].endswith("exit 5       sh -c 'echo out; echo err >&2; exit 5'"), out

    forward = await asyncio.create_subprocess_exec(
        *GPUCTL, "port-forward", job_id, env=_cli_env(c), cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert forward.stderr is not None
        line = (await asyncio.wait_for(forward.stderr.readline(), 30)).decode()
        match = re.fullmatch(rf"Forwarding from 127\.0\.0\.1:(\d+) -> {port}\n", line)
        assert match, line
        await _until(lambda: _answers(port), "the job's httpd to listen")
        assert await _get(int(match.group(1)), "/small") == SMALL
    finally:
        forward.terminate()
        await forward.wait()


async def test_exec_of_a_command_that_reads_no_input_ends_cleanly_with_input_left(one_host: Cluster) -> None:
    """`gpuctl exec -i JOB -- true < big`: the command ends first, the rest of stdin is dropped; no more."""
    c = one_host
    job_id = await _running(c)
    assert await _gpuctl(c, "exec", "-i", job_id, "--", "true", stdin=b"x" * 20_000_000) == (0, "", "")


async def test_port_forward_to_a_job_it_cannot_reach_says_so_and_exits(one_host: Cluster) -> None:
    """Not a listener that answers each connection with the same refusal, until Ctrl-C."""
    c = one_host
    job_id = await _running(c)
    assert await _gpuctl(c, "port-forward", "nosuchjob", "8080") == (1, "", "Error: no job 'nosuchjob'\n")
    await asyncio.to_thread(c.api.stop, job_id)
    await c.wait_for(job_id, "stopped")
    done = await _gpuctl(c, "port-forward", job_id, "8080")
    assert done == (1, "", f"Error: job {job_id} (sleeper) is stopped, not running\n")


async def test_attach_forwards_the_declared_ports_and_follows_the_log_to_the_jobs_end(
    one_host: Cluster,
) -> None:
    c = one_host
    port = _free_port()
    job_id = await _running(
        c, _httpd_job(port).replace("exec busybox", "echo serving; exec busybox") + f"ports: ['*:{port}']\n"
    )
    attach = await asyncio.create_subprocess_exec(
        *GPUCTL, "attach", job_id, env=_cli_env(c), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert attach.stdout is not None and attach.stderr is not None
    line = (await asyncio.wait_for(attach.stderr.readline(), 30)).decode()
    match = re.fullmatch(rf"Forwarding from 127\.0\.0\.1:(\d+) -> {port}\n", line)
    assert match, line
    assert (await asyncio.wait_for(attach.stdout.readline(), 30)) == b"serving\n"
    await _until(lambda: _answers(port), "the job's httpd to listen")
    assert await _get(int(match.group(1)), "/small") == SMALL
    await asyncio.to_thread(c.api.stop, job_id)
    assert await asyncio.wait_for(attach.wait(), 60) != 0  # the job's end ends it, with the job's code


def test_an_agents_channel_holds_a_bounded_number_of_streams() -> None:
    channel = AgentChannel("host-x", web.WebSocketResponse())
    opened = [channel.open() for _ in range(MAX_STREAMS_PER_AGENT)]
    with pytest.raises(NoChannel, match=f"host host-x has {MAX_STREAMS_PER_AGENT} streams open"):
        channel.open()
    channel.forget(opened[0])
    channel.open()


async def test_a_users_bad_frames_close_only_their_stream(one_host: Cluster) -> None:
    """What the agent would take for a broken coordinator (data after an eof) ends the user's stream at
    the coordinator; the agent's channel, and every other stream on it, go on."""
    c = one_host
    job_id = await _running(c)
    channels = c.coordinator.runner.app[CHANNELS]
    await _until(lambda: "host-a" in channels.by_host, "the agent's channel")
    channel = channels.by_host["host-a"]
    config = c.api.config
    ws = await connect(
        "localhost",
        c.coordinator.port,
        f"/api/v1/jobs/{job_id}/exec",
        config.token,
        tls.client_context(config.ca_file),
    )
    await ws.send(encode(Open(1, ExecOpen("-", ("cat",)))))
    for frame in (Eof(1), Data(1, b"late")):
        await ws.send(encode(frame))
    closes = []
    while (message := await ws.receive()) is not None:
        closes.append(decode_to_agent(message))
    await ws.close()
    assert [(type(f).__name__, getattr(f, "error", "")) for f in closes][-1] == (
        "Close",
        "the client sent data after its eof",
    )
    code, output = await _exec(c, ExecRequest(job_id, ("echo", "still")))
    assert (code, output.out) == (0, "still\n")
    assert channels.by_host["host-a"] is channel


async def test_an_agent_streams_inbox_holds_the_window_one_eof_and_the_latest_size() -> None:
    async def nowhere(frame: object) -> None:
        raise AssertionError(frame)

    stream = Stream(1, nowhere)
    for rows in (10, 20, 30):
        stream.deliver(Resize(1, rows, 80))
    stream.deliver(Data(1, b"x" * MAX_DATA_BYTES))
    stream.deliver(Eof(1))
    with pytest.raises(BadFrame, match="data after its eof"):
        stream.deliver(Data(1, b"y"))
    with pytest.raises(BadFrame, match="eof after its eof"):
        stream.deliver(Eof(1))
    assert [type(f).__name__ for f in _drain(stream.inbox)] == ["Resize", "Data", "Eof"]
    assert stream.take_size() == (30, 80)
    fresh = Stream(2, nowhere)
    for _ in range(WINDOW_BYTES // MAX_DATA_BYTES):
        fresh.deliver(Data(2, b"z" * MAX_DATA_BYTES))
    with pytest.raises(BadFrame, match="past its window"):
        fresh.deliver(Data(2, b"z"))


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
