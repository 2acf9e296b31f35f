"""The commands that reach into a running job: `gpuctl exec`, `gpuctl port-forward`, `gpuctl attach`, and
`gpuctl audit` (who did, admins only). Each wires the terminal or the sockets to a plain function of cli/remote.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import click

from cli.api import ApiError
from cli.config import CliConfig, NoConfig, load_cli_config


def _config() -> CliConfig:
    try:
        return load_cli_config()
    except (NoConfig, ApiError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("-i", "--stdin", "interactive", is_flag=True, help="Pass this terminal's input to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (sized like this one).")
@click.option("--node", type=click.IntRange(min=0), default=0, help="A multi-node job's node (default: 0).")
@click.argument("job")
@click.argument("command", nargs=-1, required=True)
def exec_command(interactive: bool, tty: bool, node: int, job: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in a running job: in its container, or as its user in its folder with its environment.
    Exits with the command's exit code. `gpuctl exec -it JOB -- bash` for a shell."""
    from cli.remote import ExecRequest, exec_stream

    size = shutil.get_terminal_size() if tty else os.terminal_size((80, 24))
    request = ExecRequest(job, command, node, tty, size.lines, size.columns)

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stdin = _stdin_queue(loop) if interactive else None
        resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        if tty:
            loop.add_signal_handler(signal.SIGWINCH, lambda: resizes.put_nowait(_size()))
        return await exec_stream(_config(), request, _writer(loop), stdin, resizes if tty else None)

    with _raw(tty and interactive and sys.stdin.isatty()):
        sys.exit(_run(run()))


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's loop: a refusal is a one-line error, Ctrl-C exits 130."""
    try:
        return asyncio.run(main)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        return 130


def _size() -> tuple[int, int]:
    size = shutil.get_terminal_size()
    return size.lines, size.columns


def _writer(loop: asyncio.AbstractEventLoop) -> Callable[[int, bytes], Awaitable[None]]:
    """This process's stdout and stderr, written by a thread: a reader who pauses (`| less`) holds the
    thread, not the loop, which keeps answering the coordinator's pings meanwhile. A daemon thread, as
    stdin's: a write that never returns does not hold the command's exit."""
    writes: queue.SimpleQueue[tuple[int, bytes, asyncio.Future[None]]] = queue.SimpleQueue()

    def settle(done: asyncio.Future[None], error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        while True:
            fd, data, done = writes.get()
            error: BaseException | None = None
            try:
                stream = sys.stderr.buffer if fd == 2 else sys.stdout.buffer
                stream.write(data)
                stream.flush()
            except OSError as exc:  # a reader who went (BrokenPipeError): the loop raises it
                error = exc
            try:
                loop.call_soon_threadsafe(settle, done, error)
            except RuntimeError:  # the loop has closed: the command ended
                return

    threading.Thread(target=run, daemon=True, name="output").start()

    async def write(fd: int, data: bytes) -> None:
        done = loop.create_future()
        writes.put((fd, data, done))
        await done

    return write


class _StdinQueue(asyncio.Queue[bytes]):
    """Chunks of stdin that a thread reads at most `ahead` of what the stream took: each one taken frees a
    place for the thread's next read."""

    def __init__(self, ahead: int) -> None:
        super().__init__()
        self.room = threading.Semaphore(ahead)

    def get_nowait(self) -> bytes:  # what `get` returns through, too
        data = super().get_nowait()
        self.room.release()
        return data


def _stdin_queue(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[bytes]:
    """This process's stdin, read by a thread (it may be a file, a pipe or a terminal), a little ahead. A
    command that ends before its input does leaves the rest unread: the thread hands nothing to a loop that
    has closed (no coroutine of its own that could be left unawaited)."""
    queue = _StdinQueue(ahead=4)

    def read() -> None:
        while True:
            queue.room.acquire()
            data = os.read(0, 65536)
            try:
                loop.call_soon_threadsafe(queue.put_nowait, data)
            except RuntimeError:  # the loop has closed: the command ended
                return
            if not data:
                return

    threading.Thread(target=read, daemon=True, name="stdin").start()
    return queue


@contextlib.contextmanager
def _raw(wanted: bool) -> Iterator[None]:
    """The terminal in raw mode meanwhile: keys, Ctrl-C included, go to the command."""
    if not wanted:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


@click.command("port-forward")
@click.option("--address", default="127.0.0.1", show_default=True, help="The local address to listen on.")
@click.option("--node", type=click.IntRange(min=0), default=0, help="A multi-node job's node (default: 0).")
@click.argument("job")
@click.argument("ports", nargs=-1, metavar="[[LOCAL:]REMOTE]...")
def port_forward(address: str, node: int, job: str, ports: tuple[str, ...]) -> None:
    """Forward local ports to a running job's ports, until Ctrl-C: those named (LOCAL 0 picks a free port),
    else those its task declares in `ports:`. Listens on 127.0.0.1 unless --address says otherwise."""
    from cli.remote import Forward, listen, parse_forward, stderr_say
    from shared.states import JobState

    try:
        forwards = [parse_forward(text) for text in ports]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ports") from None
    from cli.session import call

    view = call(
        lambda client: client.job(job)
    )  # a job it cannot reach is one line now, not each connection's
    if JobState(view.status).terminal:
        raise click.ClickException(f"job {view.id} ({view.name}) is {view.status}, not running")
    if not forwards:
        if not view.spec.ports:
            raise click.ClickException(f"job {job} declares no ports: name them, [LOCAL:]REMOTE")
        forwards = [Forward(p.local_port or 0, p.port) for p in view.spec.ports]

    async def run() -> None:
        servers = await listen(_config(), job, forwards, address, node, stderr_say)
        try:
            await asyncio.Event().wait()
        finally:
            for server in servers:
                server.close()

    try:
        asyncio.run(run())
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


@click.command("attach")
@click.option("--node", type=click.IntRange(min=0), default=0, help="A multi-node job's node (default: 0).")
@click.argument("job")
def attach(node: int, job: str) -> None:
    """Forward the ports a job declares (`ports:`) and follow its output until it ends, as dstack's attach
    does; exits with the job's exit code."""
    from cli.follow import follow_logs
    from cli.remote import Forward, listen, stderr_say
    from cli.session import api, call

    client = api()
    forwards = [Forward(p.local_port or 0, p.port) for p in call(lambda c: c.job(job)).spec.ports]

    async def run() -> int:
        servers = await listen(client.config, job, forwards, "127.0.0.1", node, stderr_say)
        try:
            return await _in_thread(lambda: follow_logs(client, job, follow=True, node=node))
        finally:
            for server in servers:
                server.close()

    sys.exit(_run(run()))


async def _in_thread(call: Callable[[], int]) -> int:
    """`call` in a daemon thread: Ctrl-C need not wait for a long poll of the logs to return."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def target() -> None:
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 (handed to the loop, which raises it)
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    threading.Thread(target=target, daemon=True, name="logs").start()
    return await done


@click.command("audit")
@click.option("--job", help="Only this job's entries (its id).")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit(job: str | None, limit: int, as_json: bool) -> None:
    """Who ran commands in which jobs, when, and with what exit code (admins)."""
    import msgspec

    from cli.session import call

    entries = call(lambda client: client.audit(job, limit))
    if as_json:
        click.echo(msgspec.json.encode(entries).decode())
        return
    import shlex
    import time

    for e in entries:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        if e.ended_at is None:
            ended = "open or cut"
        else:
            ended = f"exit {e.exit_code}" if e.exit_code is not None else f"error: {e.error}"
        click.echo(
            f"{at}  {e.who:<12} {e.project:<12} {e.job_id} node {e.node}  {ended:<12} {shlex.join(e.command)}"
        )
