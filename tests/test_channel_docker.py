"""`gpuctl exec` and `gpuctl port-forward` into a container job (a real Docker engine, its exec API, the job's
busybox image): output and exit codes, stdin, a terminal with its resizes, and a port of the container; and a
service whose replica is a container."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

import aiohttp
import pytest

from cli.remote import ExecRequest, Forward, exec_stream, listen
from tests.docker_engine import Engine
from tests.harness import cluster
from tests.test_channel import (
    SMALL,
    Output,
    _answers,
    _exec,
    _free_port,
    _get,
    _running,
    _running_sleep,
    _until,
)
from tests.test_docker import start_docker_agent, wait_for_host
from tests.test_services import Caller, _service, _ssl, _submit

pytestmark = pytest.mark.timeout(120)


async def test_exec_and_port_forward_into_a_container(docker_engine: Engine) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-a")
        await wait_for_host(c, "dock-a")
        port = _free_port()
        job_id = await _running(
            c,
            f"image: {docker_engine.image}\nenv: [MARK=in-the-container]\ncommands:\n"
            "  - for i in $(seq 1 2000); do echo line $i; done > small\n"
            f"  - exec httpd -f -p 127.0.0.1:{port} -h .\n",
        )
        code, output = await _exec(
            c, ExecRequest(job_id, ("sh", "-c", 'echo "$MARK"; echo oops >&2; exit 6'))
        )
        assert (code, output.out, output.err) == (6, "in-the-container\n", "oops\n")
        code, output = await _exec(c, ExecRequest(job_id, ("wc", "-c")), stdin=b"y" * 200_000)
        assert (code, output.out.split()) == (0, ["200000"])

        output = Output()
        resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        # the engine sizes an exec's terminal just after it starts (as `docker exec` does): only resizes are
        # checked, not the size the command saw first
        script = "tty; trap 'stty size; exit 0' WINCH; echo waiting; while :; do sleep 0.05; done"
        request = ExecRequest(job_id, ("sh", "-c", script), tty=True, rows=12, cols=34)
        run = asyncio.create_task(exec_stream(c.api.config, request, output, asyncio.Queue(), resizes))
        await output.wait_for("waiting")
        resizes.put_nowait((40, 120))
        assert await asyncio.wait_for(run, 30) == 0
        lines = output.out.replace("\r", "").split("\n")
        assert re.fullmatch(r"/dev/pts/\d+", lines[0]), output.out
        assert "40 120" in lines[1:], output.out

        servers = await listen(c.api.config, job_id, [Forward(0, port)], say=lambda line: None)
        await _until(lambda: _answers(port), "the container's httpd to listen")
        bodies = await asyncio.gather(
            *(_get(servers[0].sockets[0].getsockname()[1], "/small") for _ in range(20))
        )
        assert all(body == SMALL for body in bodies)
        servers[0].close()

        # a cut terminal kills what its shell started in jobs of their own, as for a plain process
        marker = f"{os.getpid() % 1000 + 9000}"
        output, stdin = Output(), asyncio.Queue[bytes]()
        stdin.put_nowait(f"sleep {marker} &\necho st''arted\n".encode())
        request = ExecRequest(job_id, ("sh", "-i"), tty=True)
        run = asyncio.create_task(exec_stream(c.api.config, request, output, stdin, asyncio.Queue()))
        await output.wait_for("started")
        await _until(lambda: _running_sleep(marker), "the background job to run")
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await _until(lambda: not _running_sleep(marker), "the shell's background job to be killed")


async def test_a_service_replica_in_a_container_answers_through_the_coordinator(
    docker_engine: Engine,
) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-s")
        await wait_for_host(c, "dock-s")
        httpd = "echo from the container > page && exec httpd -f -p 127.0.0.1:PORT -h ."
        await _submit(c, _service("boxed", _free_port(), f"image: {docker_engine.image}\n", httpd))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(c))) as session:
            caller = Caller(c, session, c.api.config.token)
            assert await caller.until_ok("/services/default/boxed/page") == b"from the container\n"
