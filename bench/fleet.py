"""A simulated fleet: N agents speaking the real protocol over real mutual TLS to one coordinator process.

`python -m bench.fleet [N ...]` (default 1000 5000 10000) prints a table and the JSON of `run()`.

The coordinator is the real `gpuctl-coordinator run`, in its own process, with its default settings (so the
lease and the poll timeout grow with the fleet as they would for an operator). Each agent has its own key and
certificate, got through the real enrollment (a join token, a CSR, `/agent/v1/enroll`), and its own source
address in 127.0.0.0/8, as each host of a real fleet has its own address: the per-address limits
(enrollment rate, unauthenticated connections) stay as they ship. The agents live many to a process
(asyncio, one worker process per `AGENTS_PER_WORKER`), each with one keep-alive connection through the
agent's own `CoordinatorClient`: a first sync with its inventory, then long polls at the intervals the
coordinator sets. They start `RAMP_PER_S` a second at most (a TLS handshake costs the agents' side and the
coordinator about 2 ms of CPU each on this machine), and no faster than the coordinator lets them in: each
worker has at most `BRINGUP_AT_ONCE` first syncs under way, so that on a busy machine the agents do not
pile up past their deadlines and measure their own retries (their first sync's time runs from its send). After a long poll, half the agents also sync as a
restarted agent would (desired index 0, inventory sent again): the coordinator answers those at once, and
their latency is the figure for "answers that do not wait"; long polls are counted (heartbeats/s). CPU is
process CPU time over wall time (1.0 = one core), RSS the kernel's high-water mark (VmHWM), both from /proc.

Enrollment of 10,000 hosts takes minutes on two cores, so each size's enrolled state (the
coordinator's state folder and the agents' keys) is kept in `$GPUCTL_BENCH_CACHE` (default
`~/.cache/gpuctl-bench`) and copied afresh for every run; it is made again once its certificates near
their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from agent.client import ApiError, CoordinatorClient, protocol_headers, raise_for_status, retry_after_of
from agent.detect import detect_inventory
from agent.identity import fetch_pinned_ca
from agent.sync import BACKOFF_MAX_S, BACKOFF_MIN_S, read_deadline_s
from agent.transport import Transport
from cli.api import Api
from cli.config import CliConfig
from shared import constants as C
from shared import gc_settings, tls
from shared.backoff import Backoff
from shared.join import JoinString, parse_join_string
from shared.wire import EnrollRequest, EnrollResponse, SyncRequest, TokenCreate, generation_of

SIZES = (1000, 5000, 10000)
AGENTS_PER_WORKER = 2500  # at most; 4 workers for 10,000 agents
MEASURE_S = 34.0  # past the longest default poll (30 s + 10% jitter): every agent's poll comes back once
PROBE_SHARE = 0.5  # of the long polls that come back, followed by a restarted agent's sync (answered at once)
RAMP_PER_S = 250.0  # agents started per second (all workers together): a fleet coming up, not a stampede
BRINGUP_AT_ONCE = 64  # first syncs under way per worker: a queue at the coordinator's gate of 64 handshakes
BRINGUP_LIMIT_S = 90.0  # a fleet not up by then is reported as it stands
ENROLL_CONCURRENCY = 48  # per worker; the coordinator answers 429 past its busy limit and agents wait
CACHE_MAX_AGE_S = 5 * 24 * 3600  # agent certificates live 7 days
SIMULATED_GPUS = "8xH100:80GB"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COORDINATOR = (sys.executable, "-c", "from coordinator.main import main; main()")  # `gpuctl-coordinator`


# --- the coordinator process -------------------------------------------------------------------------


@dataclass
class CoordinatorProcess:
    state_dir: Path
    port: int
    proc: subprocess.Popen[bytes] = field(init=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.state_dir / "coordinator.log").open("ab")
        self.proc = subprocess.Popen(
            [*COORDINATOR, "run", "--config", str(self.state_dir / "c.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the coordinator exited: see {self.state_dir / 'coordinator.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the coordinator did not listen within 60 s")

    def stop(self) -> None:
        self.proc.terminate()  # what is committed stays: the store is SQLite in WAL mode
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cpu_s(self) -> float:
        return _cpu_of(self.proc.pid)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _configure(state_dir: Path, database: str = "") -> CoordinatorProcess:
    """A state folder with a config that listens on loopback at a free port (written again for each run);
    the store in `database` (a URL), or SQLite in the folder."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (state_dir / "c.yaml").write_text(
        f"state_dir: {state_dir}\nhost: 127.0.0.1\nport: {port}\nserver_names: [127.0.0.1, localhost]\n"
        + (f"database: {json.dumps(database)}\n" if database else "")
    )
    return CoordinatorProcess(state_dir, port)


def _cpu_of(pid: int) -> float:
    """CPU seconds the process has used (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


# --- the agents (in worker processes) ----------------------------------------------------------------


def source_address(index: int) -> str:
    """Agent `index`'s own loopback address: 127.1.0.1, 127.1.0.2, ... (10,000 fit in 127.1.0.0/16)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class BoundTransport(Transport):
    """The direct transport, its one connection leaving from a given local address."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def session(self, ssl_context: Any, limit: int = 100) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=ssl_context, limit=1, local_addr=(self.address, 0))
        return aiohttp.ClientSession(connector=connector)


def _bound_client(url: str, ca_file: Path, pem: Path | None, address: str) -> CoordinatorClient:
    """The agent's own client (mutual TLS when `pem` holds a certificate and its key), from `address`."""
    return CoordinatorClient(url, tls.client_context(ca_file, pem, pem), BoundTransport(address))


async def _enroll_one(url: str, join: JoinString, ca_file: Path, pem: Path, index: int) -> None:
    """Enroll as agent/identity.py does (a key made here, a CSR, the join token), from the agent's address;
    keep the certificate and key in one file."""
    client = _bound_client(url, ca_file, None, source_address(index))
    key = tls.new_key()
    name = f"sim-{index:05d}"
    request = EnrollRequest(
        token=f"{join.token_id}.{join.secret}", csr=tls.make_csr(key, name).decode(), hostname=name
    )
    try:
        while True:
            async with client.session.post(
                f"{url}{C.AGENT_PREFIX}/enroll", data=msgspec.json.encode(request), headers=protocol_headers()
            ) as resp:
                body = await resp.read()
            try:
                raise_for_status(resp.status, body)
            except ApiError as exc:
                if exc.status != 429:
                    raise
                await asyncio.sleep(random.uniform(0.5, 2.0))
                continue
            answer = msgspec.json.decode(body, type=EnrollResponse)
            pem.write_bytes(answer.certificate.encode() + tls.key_to_pem(key))
            return
    finally:
        await client.close()


async def _enroll(url: str, join_string: str, folder: Path, indices: range) -> None:
    join = parse_join_string(join_string)
    gate = asyncio.Semaphore(ENROLL_CONCURRENCY)

    async def one(index: int) -> None:
        async with gate:
            await _enroll_one(url, join, folder / "ca.pem", folder / f"{index:05d}.pem", index)

    await asyncio.gather(*(one(i) for i in indices))


@dataclass
class Tally:
    first_ms: list[float] = field(default_factory=list)  # bring-up: the first sync (TLS handshake included)
    probe_ms: list[float] = field(default_factory=list)  # a restarted agent's sync, on a kept connection
    polls: int = 0  # long polls answered (heartbeats)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, exc: BaseException) -> None:
        key = f"{type(exc).__name__}: {exc}"[:120]
        self.errors[key] = self.errors.get(key, 0) + 1


class SimAgent:
    def __init__(self, url: str, ca_file: Path, pem: Path, index: int, inventory: Any) -> None:
        self.client = _bound_client(url, ca_file, pem, source_address(index))
        self.inventory = inventory
        self.generation = generation_of(inventory)
        self.task: asyncio.Task[None] | None = None

    def request(self, desired_index: int, with_inventory: bool) -> Any:

        return SyncRequest(
            agent_version=C.AGENT_VERSION,
            inventory_generation=self.generation,
            inventory=self.inventory if with_inventory else None,
            desired_index=desired_index,
            transport="direct",
        )

    async def timed(self, desired_index: int, with_inventory: bool, deadline_s: float) -> tuple[Any, float]:
        started = time.perf_counter()
        response = await self.client.sync(self.request(desired_index, with_inventory), timeout_s=deadline_s)
        return response, (time.perf_counter() - started) * 1000

    async def live(
        self, tally: list[Tally], up: asyncio.Event, delay_s: float, starting: asyncio.Semaphore
    ) -> None:
        """After `delay_s`, register (one of the `starting` at once), then long-poll as agent/sync.py
        does, with its back-off after a failure; after some polls, sync as a restarted agent."""
        await asyncio.sleep(delay_s)

        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        poll_s = C.POLL_TIMEOUT_S
        while True:
            try:
                async with starting:
                    response, ms = await self.timed(0, True, read_deadline_s(poll_s))
                tally[0].first_ms.append(ms)
                break
            except Exception as exc:
                tally[0].error(exc)
                await asyncio.sleep(backoff.delay_s(retry_after_of(exc)))
        up.set()
        backoff.reset()
        index = response.index
        while True:
            poll_s, gap_s = response.poll_timeout_s, response.sync_interval_s
            try:
                response, _ = await self.timed(index, False, read_deadline_s(poll_s))
                tally[0].polls += 1
                if random.random() < PROBE_SHARE:
                    await asyncio.sleep(gap_s * random.uniform(0.8, 1.2))
                    response, ms = await self.timed(0, True, read_deadline_s(poll_s))
                    tally[0].probe_ms.append(ms)
                index = response.index
                backoff.reset()
            except Exception as exc:
                tally[0].error(exc)
                await asyncio.sleep(backoff.delay_s(retry_after_of(exc)))
            await asyncio.sleep(gap_s * random.uniform(0.8, 1.2))


def _inventories(indices: range) -> dict[int, Any]:

    with tempfile.TemporaryDirectory() as state_dir:
        base = detect_inventory(state_dir=state_dir, blocks="auto", simulate=SIMULATED_GPUS)
    return {i: msgspec.structs.replace(base, hostname=f"sim-{i:05d}") for i in indices}


async def _fleet(conn: Connection, url: str, folder: Path, indices: range, ramp_per_s: float) -> None:
    """Bring the agents up, say when all are; then answer each `measure` with the tally since the last."""
    inventories = _inventories(indices)
    agents = [SimAgent(url, folder / "ca.pem", folder / f"{i:05d}.pem", i, inventories[i]) for i in indices]
    tally = [Tally()]
    loop = asyncio.get_running_loop()
    conn.send("ready")
    await loop.run_in_executor(None, conn.recv)  # "go"
    started = time.monotonic()
    gc_settings.for_many_connections()  # a worker holds 2,500 agents: full collections paused it 2 s
    ups = [asyncio.Event() for _ in agents]
    starting = asyncio.Semaphore(BRINGUP_AT_ONCE)
    for n, (agent, up) in enumerate(zip(agents, ups, strict=True)):
        agent.task = asyncio.create_task(agent.live(tally, up, n / ramp_per_s, starting))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BRINGUP_LIMIT_S):
            await asyncio.gather(*(up.wait() for up in ups))
    conn.send(("up", time.monotonic() - started, tally[0], sum(up.is_set() for up in ups)))
    tally[0] = Tally()
    while await loop.run_in_executor(None, conn.recv) == "measure":
        conn.send(("tally", tally[0]))
        tally[0] = Tally()
    os._exit(0)  # thousands of connections need no goodbye: the coordinator goes next


def _worker(conn: Connection, role: str, url: str, folder: str, start: int, stop: int, extra: str) -> None:
    _raise_fd_limit()
    if role == "enroll":
        asyncio.run(_enroll(url, extra, Path(folder), range(start, stop)))
        conn.send("enrolled")
    else:
        asyncio.run(_fleet(conn, url, Path(folder), range(start, stop), float(extra)))


def _spawn(role: str, url: str, folder: Path, n: int, extra: str = "") -> list[tuple[Any, Connection]]:
    context = multiprocessing.get_context("spawn")
    workers = []
    count = math.ceil(n / AGENTS_PER_WORKER)
    for w in range(count):
        parent, child = context.Pipe()
        start, stop = w * n // count, (w + 1) * n // count
        proc = context.Process(target=_worker, args=(child, role, url, str(folder), start, stop, extra))
        proc.start()
        workers.append((proc, parent))
    return workers


# --- enrolled state, kept between runs ---------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("GPUCTL_BENCH_CACHE", Path.home() / ".cache" / "gpuctl-bench"))


def enrolled_state(n: int, database: str = "") -> tuple[Path, float | None]:
    """The folder holding a coordinator state with `n` enrolled hosts (`coordinator/`) and their agents'
    keys and certificates (`agents/`), and the seconds enrollment took (None when it was already kept).
    With a `database`, the hosts are enrolled into it afresh: it lives no longer than the bench's run."""
    folder = _cache_root() / (f"fleet-{n}-postgresql" if database else f"fleet-{n}")
    done = folder / "enrolled"
    if not database and done.exists() and time.time() - done.stat().st_mtime < CACHE_MAX_AGE_S:
        return folder, None
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "agents").mkdir(parents=True)
    coordinator = _configure(folder / "coordinator", database)
    subprocess.run(
        [*COORDINATOR, "init", "--config", str(coordinator.state_dir / "c.yaml")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    coordinator.start()
    try:
        started = time.monotonic()
        join_string = _join_string(coordinator, n)
        ca_pem = asyncio.run(fetch_pinned_ca(coordinator.url, parse_join_string(join_string).ca_pin))
        (folder / "agents" / "ca.pem").write_bytes(ca_pem)  # checked against the join string's pin
        workers = _spawn("enroll", coordinator.url, folder / "agents", n, join_string)
        for proc, conn in workers:
            conn.recv()
            proc.join()
        took_s = round(time.monotonic() - started, 1)
    finally:
        coordinator.stop()
    done.write_text(f"{took_s:.1f}\n")
    return folder, took_s


def _join_string(coordinator: CoordinatorProcess, n: int) -> str:
    """A join token for `n` hosts, made as an operator makes one: through the user API."""

    token = (coordinator.state_dir / "admin-token").read_text().strip()
    api = Api(CliConfig(coordinator.url, token, coordinator.state_dir / "pki" / "ca.pem"), timeout_s=30)
    return api.create_token(TokenCreate(fleet="default", ttl_s=3600, uses=n)).join_string


# --- one size ----------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile in ms, rounded; None when nothing was measured (JSON has no NaN)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def measure(n: int, database: str = "") -> dict[str, Any]:
    cached, enroll_s = enrolled_state(n, database)
    with tempfile.TemporaryDirectory(prefix="gpuctl-fleet-") as tmp:
        state_dir = Path(tmp) / "coordinator"
        shutil.copytree(cached / "coordinator", state_dir)
        coordinator = _configure(state_dir, database)
        coordinator.start()
        ramp_per_s = RAMP_PER_S / math.ceil(n / AGENTS_PER_WORKER)  # each worker's share
        workers = _spawn("fleet", coordinator.url, cached / "agents", n, str(ramp_per_s))
        try:
            return _measure_running(n, coordinator, workers) | {"enroll_s": enroll_s}
        finally:
            for _, conn in workers:
                with contextlib.suppress(OSError):  # a worker that died has closed its end
                    conn.send("stop")
            for proc, _ in workers:
                proc.join(timeout=30)
                proc.kill()
            coordinator.stop()


def _measure_running(n: int, coordinator: CoordinatorProcess, workers: list[tuple[Any, Connection]]) -> dict:
    for _, conn in workers:
        conn.recv()  # "ready": its agents' keys are loaded, before the clock starts
    for _, conn in workers:
        conn.send("go")
    started = time.monotonic()
    ups = [conn.recv() for _, conn in workers]
    bringup_s = time.monotonic() - started
    up_n = sum(up[3] for up in ups)
    first_ms = [ms for up in ups for ms in up[2].first_ms]
    cpu0, wall0 = coordinator.cpu_s(), time.monotonic()
    agents_cpu0 = sum(_cpu_of(proc.pid) for proc, _ in workers)
    time.sleep(MEASURE_S)
    for _, conn in workers:
        conn.send("measure")
    tallies = [conn.recv()[1] for _, conn in workers]
    wall_s = time.monotonic() - wall0
    cpu = (coordinator.cpu_s() - cpu0) / wall_s
    agents_cpu = (sum(_cpu_of(proc.pid) for proc, _ in workers) - agents_cpu0) / wall_s
    probe_ms = [ms for t in tallies for ms in t.probe_ms]
    errors: dict[str, int] = {}
    for t in [up[2] for up in ups] + tallies:
        for key, count in t.errors.items():
            errors[key] = errors.get(key, 0) + count
    return {
        "agents": n,
        "up": up_n,
        "bringup_s": round(bringup_s, 1),
        "first_sync_p50_ms": _percentile(first_ms, 0.5),
        "first_sync_p99_ms": _percentile(first_ms, 0.99),
        "sync_p50_ms": _percentile(probe_ms, 0.5),
        "sync_p99_ms": _percentile(probe_ms, 0.99),
        "answers_measured": len(probe_ms),
        "heartbeats_per_s": round((sum(t.polls for t in tallies) + len(probe_ms)) / wall_s, 1),
        "coordinator_cpu": round(cpu, 3),
        "coordinator_peak_rss_mib": round(coordinator.peak_rss_mib(), 1),
        "agents_cpu": round(agents_cpu, 3),
        "errors": errors,
    }


def run(sizes: tuple[int, ...] = SIZES, database: Callable[[], str] | None = None) -> dict[str, Any]:
    """One row per fleet size; plain data (JSON as is). Each size's coordinator keeps its state in a new
    database from `database` (default: SQLite)."""
    rows = []
    for n in sizes:
        rows.append(measure(n, database() if database else ""))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "name": "fleet",
        "measure_s": MEASURE_S,
        "cpus": os.cpu_count(),
        "rows": rows,
    }


COLUMNS = (
    ("agents", "agents"),
    ("enroll_s", "enroll s"),
    ("up", "up"),
    ("bringup_s", "bring-up s"),
    ("first_sync_p99_ms", "first sync p99 ms"),
    ("sync_p50_ms", "sync p50 ms"),
    ("sync_p99_ms", "sync p99 ms"),
    ("heartbeats_per_s", "heartbeats/s"),
    ("coordinator_cpu", "coord CPU"),
    ("coordinator_peak_rss_mib", "coord peak RSS MiB"),
    ("agents_cpu", "agents CPU"),
)


def _cell(key: str, value: object) -> str:
    if value is None:
        return "cached" if key == "enroll_s" else "-"
    return str(value)


def table(result: dict[str, Any]) -> str:
    head = [title for _, title in COLUMNS]
    body = [[_cell(key, r[key]) for key, _ in COLUMNS] for r in result["rows"]]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [head, *body]]
    for r in result["rows"]:
        for error, count in r["errors"].items():
            lines.append(f"{r['agents']} agents: {count} x {error}")
    return "\n".join(lines)


if __name__ == "__main__":
    chosen = tuple(int(a) for a in sys.argv[1:]) or SIZES
    outcome = run(chosen)
    print(table(outcome))
    print(json.dumps(outcome))
