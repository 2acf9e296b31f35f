"""An exec stream (`gpuctl exec`): a command in a running job, its stdin from the stream, its output and exit
code back.

A plain-process job's command runs as the job's user, in the job's working directory, with the job's
environment, inside the job's cgroups (through agent/runtime/exec_helper.py); a container job's through the
engine's exec API (agent/runtime/container_exec.py). With `tty`, the command gets a pseudo-terminal of its
own, sized and resized by the user's terminal. When the stream is cut (the user went, the channel dropped),
every process of the command's session is killed (it has one of its own); a command that ends by itself may
leave work behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import docker

from agent.env import DEFAULT_PATH
from agent.executor import Executor
from agent.runtime.container_exec import run_container_exec
from agent.runtime.docker import DockerRuntime
from agent.runtime.exec_helper import EXEC_ARG
from agent.runtime.shim import START_FILE
from agent.streams import Stream, StreamRefused, kill_session, running_alloc
from shared.aio import cancel_and_wait
from shared.channel import EXEC_STDERR, EXEC_STDOUT, Data, Eof, ExecOpen, Resize

_HELPER = str(Path(__file__).with_name("runtime") / "exec_helper.py")
HELPER_ENV = {"PATH": DEFAULT_PATH}  # the helper may be root: the job's environment is the command's alone


@dataclass(frozen=True)
class JobContext:
    """Where and as whom a plain-process job runs."""

    user: str  # "UID:GID", or "" for the agent's own user
    work_dir: Path
    start_file: Path  # the environment and cgroups its supervisor started it with
    cgroups: list[str]


def job_context(alloc_dir: Path) -> JobContext:
    """Read from the job's own files: its work dir (owned by the job's user), and its start record. Raises
    StreamRefused when they are gone."""
    work_dir, start_file = alloc_dir / "work", alloc_dir / START_FILE
    try:
        start = json.loads(start_file.read_text())
        owner = work_dir.stat()
    except (OSError, ValueError) as exc:
        raise StreamRefused(f"the job's start record cannot be read: {exc}") from None
    user = f"{owner.st_uid}:{owner.st_gid}" if os.geteuid() == 0 and owner.st_uid != 0 else ""
    return JobContext(user, work_dir, start_file, list(start["cgroups"]))


def docker_client(executor: Executor) -> docker.DockerClient:
    """The engine that runs this agent's container jobs. Raises StreamRefused."""
    runtime = executor.runtimes.get("docker")
    if not isinstance(runtime, DockerRuntime):
        raise StreamRefused("this agent has no Docker engine for the job's container")
    return runtime.host.client


def helper_argv(context: JobContext, tty: bool, argv: tuple[str, ...]) -> list[str]:
    head = [sys.executable, EXEC_ARG] if getattr(sys, "frozen", False) else [sys.executable, "-I", _HELPER]
    return [*head, str(context.start_file), context.user, "1" if tty else "0", "--", *argv]


async def run_exec(stream: Stream, what: ExecOpen, executor: Executor) -> int | None:
    """Run the command to its end; answers its exit code (negative: the signal that killed it)."""
    local = running_alloc(executor, what.alloc_id)
    if local.spec.spec.image:
        return await run_container_exec(stream, what, docker_client(executor))
    context = job_context(local.dir)
    argv = helper_argv(context, what.tty, what.argv)
    if what.tty:
        return await _with_terminal(stream, what, context, argv)
    return await _with_pipes(stream, context, argv)


async def _with_pipes(stream: Stream, context: JobContext, argv: list[str]) -> int | None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=context.work_dir,
        env=HELPER_ENV,
        start_new_session=True,
    )
    assert process.stdin and process.stdout and process.stderr
    stdin = asyncio.create_task(_feed_pipe(stream, process.stdin))
    try:
        await asyncio.gather(
            _pump(stream, process.stdout, EXEC_STDOUT), _pump(stream, process.stderr, EXEC_STDERR)
        )
        return await process.wait()
    except BaseException:
        if process.returncode is None:  # else its number may be another's now
            kill_session(process.pid)
        raise
    finally:
        stdin.cancel()


async def _pump(stream: Stream, reader: asyncio.StreamReader, fd: int) -> None:
    """The command's output to the stream, reading no more than the peer's credit allows."""
    while True:
        budget = await stream.read_budget()
        data = await reader.read(budget)
        await stream.send_read(data, budget, fd)
        if not data:
            return


async def _feed_pipe(stream: Stream, stdin: asyncio.StreamWriter) -> None:
    while True:
        frame = await stream.inbox.get()
        if isinstance(frame, Eof):
            stdin.close()
            return
        if isinstance(frame, Data):
            stdin.write(frame.data)
            with contextlib.suppress(ConnectionError):
                await stdin.drain()
            await stream.passed_on(len(frame.data))


async def _with_terminal(stream: Stream, what: ExecOpen, context: JobContext, argv: list[str]) -> int | None:
    master, slave = os.openpty()
    _set_size(master, what.rows, what.cols)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=context.work_dir,
            env=HELPER_ENV,
            start_new_session=True,  # before it runs: a cut at once still finds its session
        )
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    stdin = asyncio.create_task(_feed_terminal(stream, master))
    output = asyncio.create_task(_pump_terminal(stream, master))
    try:
        code = await process.wait()
        await _drain_terminal(stream, master, output)
        return code
    except BaseException:
        if process.returncode is None:  # else its number may be another's now
            kill_session(process.pid)
        raise
    finally:
        await cancel_and_wait(stdin, output)  # before the terminal closes: neither may touch it after
        os.close(master)


async def _pump_terminal(stream: Stream, master: int) -> None:
    """The terminal's output, until its far end is closed by every process (EIO)."""
    while True:
        budget = await stream.read_budget()
        await _ready(master)
        try:
            data = os.read(master, budget)
        except BlockingIOError:  # nothing after all: give the budget back and wait again
            await stream.send_read(b"", budget)
            continue
        except OSError:  # EIO: no process holds the terminal any more
            data = b""
        await stream.send_read(data, budget, EXEC_STDOUT)
        if not data:
            return


async def _drain_terminal(stream: Stream, master: int, output: asyncio.Task[None]) -> None:
    """After the command's exit: what it wrote and the pump has not read yet, without waiting for its
    children that still hold the terminal (they are killed)."""
    output.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await output
    while True:
        budget = await stream.read_budget()
        try:
            data = os.read(master, budget)
        except OSError:  # EAGAIN: all read; EIO: closed
            data = b""
        await stream.send_read(data, budget, EXEC_STDOUT)
        if not data:
            return


async def _feed_terminal(stream: Stream, master: int) -> None:
    while True:
        frame = await stream.inbox.get()
        if isinstance(frame, Resize):
            _set_size(master, *stream.take_size())
        elif isinstance(frame, Data):
            view = memoryview(frame.data)
            while view:
                try:
                    view = view[os.write(master, view) :]
                except BlockingIOError:
                    await _ready(master, writing=True)
            await stream.passed_on(len(frame.data))


async def _ready(fd: int, writing: bool = False) -> None:
    """Wait until the terminal can be read (or written)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    watch, unwatch = (
        (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)
    )
    watch(fd, ready.set_result, None)
    try:
        await ready
    finally:
        unwatch(fd)


def _set_size(fd: int, rows: int, cols: int) -> None:
    """The terminal's size; the kernel tells its foreground process group (SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
