"""Starts a command inside a plain-process job (`gpuctl exec`): it joins the job's cgroups, takes the terminal
it was given as its controlling one (with `--tty`), becomes the job's user and then replaces itself with the
command, in the job's environment.

A separate program, like the job's supervisor (shim.py), so the agent never forks its own threaded process:
the agent starts this in the job's working directory, with its stdio already wired (pipes, or a
pseudo-terminal's far end) and a fixed environment. It may run as root: like the supervisor, it reads the
job's environment and cgroups from the job's start record (START_FILE, 0600) and gives the environment to
the command alone, so nothing of it (LD_PRELOAD, LD_LIBRARY_PATH, ...) acts while it is root. Standard
library only; run with `python -I`.

usage: exec_helper START_FILE UID:GID TTY(0|1) -- ARGV...   (UID:GID empty: stay the agent's user)
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import termios

EXEC_ARG = "__exec__"  # a packaged (frozen) agent's first argument that makes it run this helper


def main(argv: list[str]) -> int:
    start_file, user, tty, sep, *command = argv
    if sep != "--" or not command:
        print("usage: exec_helper START_FILE UID:GID TTY -- ARGV...", file=sys.stderr)
        return 2
    with open(start_file) as f:
        start = json.load(f)
    for folder in start["cgroups"]:  # while still root: the job's limits hold for what runs here too
        with open(os.path.join(folder, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if tty == "1":  # started in a session of its own, which has no terminal yet
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # stdin is the terminal: job control and SIGWINCH work
    if user and os.geteuid() == 0:
        uid, gid = (int(n) for n in user.split(":"))
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    try:
        os.execvpe(command[0], command, start["env"])  # found on the job's PATH
    except OSError as exc:
        print(f"gpuctl exec: {command[0]}: {exc.strerror}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
