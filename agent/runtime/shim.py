"""The supervisor of one plain-process job: `python shim.py EXIT_FILE UID:GID -- ARGV...` (UID:GID empty:
the job runs as the supervisor's own user). `python shim.py --serve` is a fork server of supervisors (see
`serve`): the agent keeps one, so that a job's start is a fork, not a new interpreter.

It detaches first (forks; the agent's direct child exits once the supervisor has written `shim.pid`), so the
agent never has to reap it. It then starts the job in a process group of its own (as USER when it runs as root), passes SIGTERM/SIGINT on to
that group, and when the job ends writes its exit status to EXIT_FILE (atomically) and kills what the job left
behind. It outlives the agent, so a restarted agent learns how a job ended without having been its parent.
Imports stay minimal: this runs once per job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback

START_FILE = "start.json"  # beside EXIT_FILE: {"env": the job's, "cpus": ids to pin to, "cgroups": folders}
_pending: list[int] = []  # signals that came before the job existed
_child: list[subprocess.Popen[bytes]] = []


def _handler(signum: int, _frame: object) -> None:
    """Pass SIGTERM/SIGINT on to the job's process group; remember it if the job is not started yet."""
    if not _child:
        _pending.append(signum)
        return
    try:
        os.killpg(_child[0].pid, signum)
    except ProcessLookupError:
        pass


def _forward(child: subprocess.Popen[bytes]) -> None:
    _child.append(child)
    for signum in _pending:
        _handler(signum, None)


def _write_exit(path: str, returncode: int) -> None:
    code = 128 - returncode if returncode < 0 else returncode  # a shell's convention for "killed by signal"
    record = {
        "exit_code": code,
        "signal": -returncode if returncode < 0 else None,
        "finished_at": time.time(),
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def start_time(pid: int | str) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process for ever.
    Empty for a process that is gone or has exited (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def _detach(pid_file: str) -> None:
    """Fork; the parent exits once the child has written its pid file (so the caller can wait for it)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    with open(pid_file + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {start_time('self')}")
    os.replace(pid_file + ".tmp", pid_file)
    os.write(write_end, b"1")
    os.close(write_end)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _handler)  # first of all: a stop must never kill the supervisor itself
    signal.signal(signal.SIGINT, _handler)
    exit_file, user, sep, *command = argv
    assert sep == "--" and command, "usage: shim EXIT_FILE UID:GID -- ARGV..."
    with open(os.path.join(os.path.dirname(exit_file), START_FILE)) as f:
        start = json.load(f)
    job_env = start["env"]
    if start["cpus"]:  # before detaching: a refusal fails the start, and says why in the log
        os.sched_setaffinity(0, start["cpus"])  # this supervisor, and so the job it starts
    _detach(os.path.join(os.path.dirname(exit_file), "shim.pid"))
    _join_cgroups(start["cgroups"])
    ids = [int(n) for n in user.split(":")] if user and os.geteuid() == 0 else None
    child = subprocess.Popen(
        command,
        process_group=0,
        user=None if ids is None else ids[0],
        group=None if ids is None else ids[1],
        extra_groups=None if ids is None else [],
        stdin=subprocess.DEVNULL,
        env=job_env,
    )
    with open(os.path.join(os.path.dirname(exit_file), "child.pid"), "w") as f:
        f.write(str(child.pid))
    _forward(child)
    returncode = child.wait()
    try:
        os.killpg(child.pid, signal.SIGKILL)  # like a container whose PID 1 ended: nothing lingers
    except (ProcessLookupError, PermissionError):
        pass
    _write_exit(exit_file, returncode)
    return 0


def _join_cgroups(folders: list[str]) -> None:
    """Move this supervisor into the allocation's cgroups, so the job it starts and every child of the job
    are inside them."""
    for folder in folders:
        with open(os.path.join(folder, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


SERVE_ARG = "--serve"


def serve() -> int:
    """Fork a supervisor for each request on stdin, one JSON line `{"argv", "cwd", "log"}` (`argv` as for
    `main`), and answer one line each: the exit status of the forked process, 0 once the supervisor it became
    has detached and written `shim.pid`. The supervisor starts as a process started by the agent would: a
    session of its own, stdin from /dev/null, stdout and stderr appended to `log` (0600), in `cwd`, with this
    server's environment (the agent gives it a fixed one). Ends at the end of stdin: the agent is gone, and
    the supervisors, detached, go on."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _supervise(request["argv"], request["cwd"], request["log"])
        _, status = os.waitpid(pid, 0)
        answers.write(b"%d\n" % os.waitstatus_to_exitcode(status))
        answers.flush()
    return 0


def _supervise(argv: list[str], cwd: str, log: str) -> None:
    """In the forked child: become the supervisor of `main(argv)`; never returns to the server's loop."""
    code = 1
    try:
        os.setsid()
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        os.chdir(cwd)
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()  # into the job's log, where the agent's error points
    finally:
        sys.stderr.flush()
        os._exit(code)


def entry(argv: list[str]) -> int:
    """The command line: a fork server with `--serve`, else one supervisor."""
    return serve() if argv == [SERVE_ARG] else main(argv)


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
