"""The agent's end of the supervisors' fork server (`shim.py --serve`, see agent.runtime.shim.serve).

A new interpreter per job cost ~50 ms of CPU on a loaded two-core host, while the agent's event loop waited
for it to detach: 73% of the agent's wall time in a run of 300 `true` jobs (py-spy, Popen.wait under
ProcessRuntime.start). The fork server has imported all a supervisor needs once; a start is a fork of it.
"""

from __future__ import annotations

import json
import select
import subprocess
from pathlib import Path
from typing import NoReturn

from agent.env import DEFAULT_PATH

START_TIMEOUT_S = 30.0  # a supervisor that has not detached by then is taken as failed


class ShimServerError(RuntimeError):
    """The fork server did not answer: it is stopped, and the next start runs a fresh one."""


class ShimServer:
    """One fork server, started on first use and again after it died. Requests are pipelined: `send` them
    all, then read each `answer` in turn. Not safe concurrently (the agent starts jobs from its one event
    loop thread)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command  # how to run `shim.py --serve` (agent.runtime.process.shim_command)
        self._proc: subprocess.Popen[bytes] | None = None
        self.unanswered = 0  # starts sent whose answer was not read yet

    def start(self, argv: list[str], cwd: Path, log_file: Path) -> int:
        """`send`, then its `answer`."""
        self.send(argv, cwd, log_file)
        return self.answer()

    def send(self, argv: list[str], cwd: Path, log_file: Path) -> None:
        """Ask for a supervisor running `shim.main(argv)` in `cwd`, its output appended to `log_file`; its
        `answer` comes later, in the order asked, so the agent prepares the next job while this one forks.
        Raises ShimServerError when the server cannot be started."""
        request = json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log_file)}).encode() + b"\n"
        try:
            proc = self._running()
            assert proc.stdin is not None
            proc.stdin.write(request)  # a step's few requests fit the pipe: this does not wait for the server
        except (OSError, ValueError) as exc:
            self._fail(exc)
        self.unanswered += 1

    def answer(self) -> int:
        """The exit status of the fork for the oldest unanswered `send`: 0 once its supervisor has detached
        and written its `shim.pid`. Raises ShimServerError when the server does not answer in
        START_TIMEOUT_S (it is stopped, and every unanswered start with it)."""
        assert self.unanswered, "no start waits for an answer"
        proc = self._proc
        try:
            if proc is None or proc.stdout is None:
                raise ValueError("it was stopped")
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
            if not ready:
                raise ValueError(f"no answer in {START_TIMEOUT_S:.0f} s")
            answer = proc.stdout.readline()
            if not answer:
                raise ValueError(f"it exited with {proc.wait()}")
        except (OSError, ValueError) as exc:
            self._fail(exc)
        self.unanswered -= 1
        return int(answer)

    def _fail(self, exc: Exception) -> NoReturn:
        self.close()
        raise ShimServerError(f"the supervisors' fork server failed: {exc}") from exc

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is not None:
            self.close()  # it died (killed, out of memory): its pipes go with it
        if self._proc is None:
            # A fixed environment and a session of its own, as each supervisor had when the agent started it
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # unbuffered: an answer read ahead into a buffer would hide from select()
                env={"PATH": DEFAULT_PATH},
                start_new_session=True,
            )
        return self._proc

    def close(self) -> None:
        """Stop the server (the end of its stdin); the supervisors it forked run on. Idempotent."""
        proc, self._proc = self._proc, None
        self.unanswered = 0  # their answers went with the server's pipe
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
