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

from agent.env import DEFAULT_PATH

START_TIMEOUT_S = 30.0  # a supervisor that has not detached by then is taken as failed


class ShimServerError(RuntimeError):
    """The fork server did not answer: it is stopped, and the next start runs a fresh one."""


class ShimServer:
    """One fork server, started on first use and again after it died. Not safe concurrently (the agent
    starts jobs from its one event loop thread)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command  # how to run `shim.py --serve` (agent.runtime.process.shim_command)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str], cwd: Path, log_file: Path) -> int:
        """Fork a supervisor running `shim.main(argv)` in `cwd`, its output appended to `log_file`; the exit
        status of the fork, 0 once the supervisor has detached and written its `shim.pid`. Raises
        ShimServerError when the server cannot be started or does not answer in START_TIMEOUT_S."""
        request = json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log_file)}).encode() + b"\n"
        try:
            return self._ask(request)
        except (OSError, ValueError) as exc:
            self.close()
            raise ShimServerError(f"the supervisors' fork server failed: {exc}") from exc

    def _ask(self, request: bytes) -> int:
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(request)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        if not ready:
            raise ValueError(f"no answer in {START_TIMEOUT_S:.0f} s")
        answer = proc.stdout.readline()
        if not answer:
            raise ValueError(f"it exited with {proc.wait()}")
        return int(answer)

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is not None:
            self.close()  # it died (killed, out of memory): its pipes go with it
        if self._proc is None:
            # A fixed environment and a session of its own, as each supervisor had when the agent started it
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={"PATH": DEFAULT_PATH},
                start_new_session=True,
            )
        return self._proc

    def close(self) -> None:
        """Stop the server (the end of its stdin); the supervisors it forked run on. Idempotent."""
        proc, self._proc = self._proc, None
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
