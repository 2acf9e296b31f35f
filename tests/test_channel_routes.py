"""The channel travels the agent's own route: an agent whose only way out is an SSH tunnel through a login node
(or an HTTP CONNECT proxy) still serves `gpuctl exec`, `gpuctl port-forward` and a service's replica (real
sshd, tinyproxy and network namespaces, a coordinator process, the real CLI)."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time

import aiohttp
import pytest

from shared.spec import TaskSpec, parse_spec
from tests.login_site import Site, login_site
from tests.netns import SSHD, require_tools, wait_until
from tests.sshd import start_tinyproxy
from tests.test_services import Caller, _service, service_spec, stream_passes_chunk_by_chunk

pytestmark = pytest.mark.timeout(120)

GPUCTL = [sys.executable, "-c", "from cli.main import main; main()"]
WEB_PORT = 8088  # on the node's own loopback, inside its namespace
CHANNEL_OPEN = "channel to the coordinator open"
CHAT = service_spec(_service("chat", WEB_PORT))  # one replica, listening on the node's WEB_PORT


def _cli_env(site: Site) -> dict[str, str]:
    return {**os.environ, "GPUCTL_CONFIG": str(site.root / "cli.yaml")}


def _running_job(site: Site, spec: TaskSpec) -> str:
    """Submit `spec` once the node joined; the id of its job (a service's: of its one replica), once that runs
    and the node's channel is open."""
    api = site.api
    assert api is not None
    wait_until(lambda: [h.name for h in api.hosts()] == ["gpu-node"], 30, "the host to join")
    submitted = api.submit(spec)
    job_id = api.job(f"{submitted.id}[0]").id if submitted.service_path else submitted.id
    wait_until(lambda: api.job(job_id).status == "running", 30, "the job to run")
    site.wait_log(CHANNEL_OPEN)
    return job_id


def _task(commands: str) -> TaskSpec:
    return parse_spec(f"commands: {commands}", environ={})


def _exec_answers(site: Site, job_id: str) -> None:
    done = subprocess.run(
        [*GPUCTL, "exec", job_id, "--", "sh", "-c", "echo $GPUCTL_JOB_ID from $(hostname); exit 4"],
        env=_cli_env(site), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (4, ""), done.stderr
    assert done.stdout.startswith(f"{job_id} from ")


def test_exec_and_port_forward_reach_a_job_behind_a_bastion() -> None:
    require_tools(SSHD, "ssh", "ssh-keygen", "busybox")
    with login_site("gc") as site:
        site.start_coordinator()
        site.join_behind_bastion()
        httpd = f"exec busybox httpd -f -p 127.0.0.1:{WEB_PORT} -h ."
        job_id = _running_job(site, _task(f"['echo through the bastion > page', '{httpd}']"))
        _exec_answers(site, job_id)

        command = [*GPUCTL, "port-forward", job_id, f"0:{WEB_PORT}"]
        with subprocess.Popen(command, env=_cli_env(site), stderr=subprocess.PIPE) as forward:
            try:
                assert forward.stderr is not None
                line = forward.stderr.readline().decode()
                match = re.fullmatch(rf"Forwarding from 127\.0\.0\.1:(\d+) -> {WEB_PORT}\n", line)
                assert match, line
                body = _get_until_served(int(match.group(1)))
                assert body.endswith(b"\r\n\r\nthrough the bastion\n"), body
            finally:
                forward.terminate()


def _get_until_served(port: int) -> bytes:
    """GET /page through the forward, again until the job's httpd has started (a refused connection to it
    closes the forwarded one with nothing)."""
    import socket

    deadline = time.monotonic() + 30
    while True:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /page HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        if chunks or time.monotonic() > deadline:
            return b"".join(chunks)
        time.sleep(0.2)


async def test_a_service_behind_a_bastion_streams_its_answer_through_the_coordinator() -> None:
    require_tools(SSHD, "ssh", "ssh-keygen")
    with login_site("gv") as site:
        site.start_coordinator()
        site.join_behind_bastion()
        _running_job(site, CHAT)
        await _service_streams(site)


async def _service_streams(site: Site) -> None:
    """Service `chat`, whose one replica runs on the node, answers at the coordinator, its chunked answer
    passing chunk by chunk."""
    assert site.api is not None
    tls = ssl.create_default_context(cafile=str(site.api.config.ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
        caller = Caller(site.url, session, site.api.config.token)
        await stream_passes_chunk_by_chunk(caller, "/services/default/chat")


async def test_exec_and_a_service_reach_a_replica_behind_an_http_connect_proxy() -> None:
    require_tools("tinyproxy")
    with login_site("gx") as site:
        site.start_coordinator()
        proxy_port = 3129
        start_tinyproxy(
            site.net, "b1", site.b1_to_node, proxy_port, site.root / "proxy",
            allow=site.b1_to_node.rsplit(".", 1)[0] + ".0/24",
        )  # fmt: skip
        proxy = f"http://{site.b1_to_node}:{proxy_port}"
        site.start_agent("join", env={"HTTPS_PROXY": proxy, "NO_PROXY": "localhost"})
        job_id = _running_job(site, CHAT)  # the node has room for one job: the service's replica
        _exec_answers(site, job_id)
        await _service_streams(site)
