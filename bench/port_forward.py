"""(f) `gpuctl port-forward` beside a direct connection to the same job's port:

    python -m bench --only f

On one simulated host (bench/cluster.py: a coordinator and an agent as separate processes, TLS between
them), a plain-process job serves a file with busybox's httpd and echoes bytes back with Python; the real
`gpuctl port-forward` CLI forwards both ports. Each row is one measure taken directly (127.0.0.1:PORT on
the host, what a job's neighbour would see) and through the forward (CLI → coordinator → agent's channel →
the job): a download's throughput, a new connection's first answer (the forward opens a TLS WebSocket to the
coordinator per connection), and a round trip on a connection already open.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time

from bench.cluster import Cluster, free_port, gpuctl_cluster, stop
from bench.report import percentile
from shared.spec import TaskSpec

ECHO = (
    "import socket, threading\n"
    "def serve(c):\n"
    "    while d := c.recv(65536): c.sendall(d)\n"
    "s = socket.create_server(('127.0.0.1', {port}))\n"
    "while True: threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()\n"
)
READY_TIMEOUT_S = 60.0


def run(quick: bool = False) -> dict[str, object]:
    size_mb, connections, round_trips = (50, 50, 200) if quick else (200, 200, 1000)
    web, echo = free_port(), free_port()
    with gpuctl_cluster(1) as cluster:
        job = _start_job(cluster, web, echo, size_mb)
        command = ["gpuctl", "port-forward", job, f"0:{web}", f"0:{echo}"]
        forward = subprocess.Popen(command, env=cluster.env, stderr=subprocess.PIPE, start_new_session=True)
        try:
            local = _forwarded(forward, (web, echo))
            downloads = [_download_mb_per_s(port, size_mb) for port in (web, local[web])]
            connects = [_connect_s(port, connections) for port in (web, local[web])]
            trips = [_round_trip_s(port, round_trips) for port in (echo, local[echo])]
        finally:
            stop(forward)
    rows = [
        _row("download, MB/s", *downloads),
        *(
            _row(f"new connection + GET, p{p} ms", *(percentile(t, p) * 1000 for t in connects))
            for p in (50, 90)
        ),
        *(
            _row(f"round trip, open conn, p{p} ms", *(percentile(t, p) * 1000 for t in trips))
            for p in (50, 99)
        ),
    ]
    return {"rows": rows, "download_mb": size_mb, "connections": connections, "round_trips": round_trips}


def _row(measure: str, direct: float, forwarded: float) -> dict[str, object]:
    return {
        "measure": measure,
        "direct": direct,
        "forwarded": forwarded,
        "forwarded/direct": forwarded / direct,
    }


def _start_job(cluster: Cluster, web: int, echo: int, size_mb: int) -> str:
    spec = TaskSpec(
        name="bench-forward",
        commands=(
            f"head -c {size_mb * 1_000_000} /dev/zero > big && echo hello > small",
            f"busybox httpd -p 127.0.0.1:{web} -h .",
            f"exec python3 -c {shlex.quote(ECHO.format(port=echo))}",
        ),
    )
    job = cluster.api.submit(spec).id
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (_listening(web) and _listening(echo)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job's servers did not listen in {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    return job


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _forwarded(forward: subprocess.Popen[bytes], ports: tuple[int, ...]) -> dict[int, int]:
    """Remote port → the local port the CLI listens on, from its "Forwarding from ..." lines."""
    assert forward.stderr is not None
    local: dict[int, int] = {}
    while len(local) < len(ports):
        line = forward.stderr.readline().decode()
        match = re.fullmatch(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)\n", line)
        if not match:
            raise RuntimeError(f"gpuctl port-forward said {line!r}")
        local[int(match.group(2))] = int(match.group(1))
    return local


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def _download_mb_per_s(port: int, size_mb: int) -> float:
    started = time.perf_counter()
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        while chunk := s.recv(1 << 20):
            received += len(chunk)
    if received < size_mb * 1_000_000:
        raise RuntimeError(f"port {port}: {received} bytes of {size_mb} MB")
    return size_mb / (time.perf_counter() - started)


def _connect_s(port: int, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        if not _get(port, "/small").endswith(b"hello\n"):
            raise RuntimeError(f"port {port}: a wrong answer")
        times.append(time.perf_counter() - started)
    return times


def _round_trip_s(port: int, n: int) -> list[float]:
    times = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            started = time.perf_counter()
            s.sendall(b"x" * 64)
            got = b""
            while len(got) < 64:
                got += s.recv(64 - len(got))
            times.append(time.perf_counter() - started)
    return times
