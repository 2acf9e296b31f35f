"""The plain-process runtime: each job runs under a small supervisor (agent.runtime.shim) in a session of
its own, as an unprivileged user when the agent runs as root, with its output appended to the log spool.

A job gets a clean login-like environment (the executor's job env plus USER, LOGNAME and SHELL; nothing of
the agent's own) and runs pinned to its blocks' CPU cores, as mapped onto this machine (agent.machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

from agent.env import DEFAULT_PATH
from agent.machine import kernel_cpus, this_machine
from agent.runtime.base import Observed, RuntimeStartError
from agent.runtime.commands import job_script, shell_path
from agent.runtime.shim import start_time
from shared import tls
from shared.states import AllocState
from shared.wire import AllocationSpec, Inventory


class ProcessRuntime:
    name = "process"

    def __init__(self, run_as: str | None) -> None:
        self.run_as = run_as  # None: run as the agent's own user (allowed only when it is not root)

    def start(self, alloc: AllocationSpec, env: dict[str, str], alloc_dir: Path, log_file: Path) -> None:
        work_dir = Path(env["HOME"])
        work_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as and os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(self.run_as)
            _chown_tree(work_dir, entry.pw_uid, entry.pw_gid)  # `files:` unpacked there are the job's own
        env = {**login_env(self._job_user()), **env}
        write_cpus(alloc_dir, alloc.cpus)
        shell, script = shell_path(alloc.spec.shell), job_script(alloc.spec.commands)
        # The supervisor may run as root: it gets an isolated interpreter (-I ignores PYTHON* variables) and a
        # fixed environment; the job's own environment (PYTHONPATH, LD_PRELOAD, ...) reaches only the job.
        tls.write_private(alloc_dir / "env.json", json.dumps(env).encode())
        argv = [sys.executable, "-I", _SHIM, str(alloc_dir / "exit.json"), self.run_as or ""]
        argv += ["--", shell, "-c", script]
        try:
            with open(log_file, "ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=work_dir,
                    env={"PATH": DEFAULT_PATH},
                    start_new_session=True,  # outlives the agent; the agent re-adopts it after a restart
                )
        except OSError as exc:
            raise RuntimeStartError(f"cannot start the job: {exc}") from exc
        try:
            started = proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            started = False
        if not started or not (alloc_dir / "shim.pid").exists():
            raise RuntimeStartError(
                "the job's supervisor did not start; the allocation's output.log says why"
            )

    def _job_user(self) -> str:
        """The user the job runs as: `run_as` under a root agent, else the agent's own user."""
        if self.run_as and os.geteuid() == 0:
            return self.run_as
        import pwd

        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # a uid without a passwd entry (a container's arbitrary uid)
            return str(os.geteuid())

    def observe(self, alloc_dir: Path) -> Observed:
        exit_file = alloc_dir / "exit.json"
        if exit_file.exists():
            record = json.loads(exit_file.read_text())
            return Observed(AllocState.EXITED, record["exit_code"], "", record["finished_at"])
        if _alive(alloc_dir / "shim.pid"):
            return Observed(AllocState.RUNNING)
        if exit_file.exists():  # it ended between the two checks
            return self.observe(alloc_dir)
        if not (alloc_dir / "shim.pid").exists():
            return Observed(AllocState.FAILED, None, "the job never started")
        return Observed(AllocState.FAILED, None, "the job's supervisor died without recording an exit status")

    def signal_stop(self, alloc_dir: Path, kill: bool) -> None:
        signum = signal.SIGKILL if kill else signal.SIGTERM
        try:
            os.killpg(int((alloc_dir / "child.pid").read_text()), signum)
            return
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            pass
        if _alive(alloc_dir / "shim.pid"):  # not yet forked: the shim passes SIGTERM on
            try:
                os.kill(int((alloc_dir / "shim.pid").read_text().split()[0]), signum)
            except (ProcessLookupError, ValueError):
                pass

    def release(self, alloc_dir: Path) -> None:
        pass  # the shim has exited; nothing outlives the allocation's folder

    def sweep(self, known_alloc_ids: Collection[str]) -> None:
        pass  # a job's supervisor lives only in its allocation's folder

    def set_inventory(self, inventory: Inventory) -> None:
        pass  # the job's environment (its devices) comes from the executor

    def close(self) -> None:
        pass  # supervisors are detached: they outlive the agent by design


def login_env(user: str) -> dict[str, str]:
    """What a login would set that the job env does not: who the job runs as, and its shell. Pure."""
    return {"USER": user, "LOGNAME": user, "SHELL": "/bin/sh"}


def write_cpus(alloc_dir: Path, declared: Collection[int]) -> None:
    """The CPU ids the supervisor pins the job to (file `cpus`): its blocks' cores on this machine."""
    if declared:
        cpus = kernel_cpus(sorted(declared), this_machine().cpus)
        (alloc_dir / "cpus").write_text(",".join(str(c) for c in cpus))


def check_reachable(root: Path, user: str | None) -> None:
    """Jobs run as `user` in folders under `root`: every folder above must let others through (o+x).
    Raises PermissionError with a one-line reason naming the folder."""
    if user is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    for folder in root.parents:
        if not folder.stat().st_mode & 0o001:
            raise PermissionError(
                f"state_dir: jobs run as {user!r} but {folder} does not let other users through (mode "
                f"{folder.stat().st_mode & 0o777:o}); use a state dir such as /var/lib/gpuctl-agent"
            )


_SHIM = str(Path(__file__).with_name("shim.py"))  # run as a script: it needs only the standard library


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _alive(pid_file: Path) -> bool:
    try:
        pid_text, started = pid_file.read_text().split()
    except (FileNotFoundError, ValueError):
        return False
    return start_time(int(pid_text)) == started
