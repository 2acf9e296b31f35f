"""How a job's `commands` run, the same in every runtime: one script under the job's `shell` with `set -e`,
so the first failing command ends the job with its exit code."""

from __future__ import annotations

from agent.runtime.base import RuntimeStartError

SHELLS = {"sh": "/bin/sh", "bash": "/bin/bash"}  # dstack's names; an absolute path is used as given
DEFAULT_SHELL = "/bin/sh"


def shell_path(shell: str | None) -> str:
    """The program that runs the script. Raises RuntimeStartError for anything but sh, bash or an
    absolute path (the coordinator refuses those already; an older one may not have)."""
    if shell is None:
        return DEFAULT_SHELL
    if shell in SHELLS:
        return SHELLS[shell]
    if shell.startswith("/"):
        return shell
    raise RuntimeStartError(f"shell: expected sh, bash or an absolute path, got {shell!r}")


def job_script(commands: tuple[str, ...], merge_stderr: bool = False, first: str = "") -> str:
    """The script the shell runs (`<shell> -c SCRIPT`). `merge_stderr`: stderr joins stdout first thing,
    for runtimes that would otherwise read the two through separate pipes and lose their order. `first`:
    lines of the agent's own to run before `set -e` and the commands (a multi-node job's sshd)."""
    head = "exec 2>&1\n" if merge_stderr else ""
    return head + first + "set -e\n" + "\n".join(commands) + "\n"
