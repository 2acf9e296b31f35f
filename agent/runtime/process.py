"""The plain-process runtime: each job runs under a small supervisor (agent.runtime.shim, forked by one fork
server: agent.runtime.shim_server) in a session of its own, as a uid of its own (agent.runtime.jobuser) when
the agent runs as root, with its output appended to the log spool, which only the agent can read.

A job gets a clean login-like environment (the executor's job env plus USER, LOGNAME and SHELL; nothing of
the agent's own), runs pinned to its blocks' CPU cores as mapped onto this machine (agent.machine), and in
cgroups of its own (agent.runtime.cgroups) that hold its cores, memory, pids and devices. A node of a
multi-node job starts its sshd first, as the job's user (agent.job_ssh)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Collection
from pathlib import Path

from agent.job_ssh import prepare_process, wants_ssh
from agent.machine import kernel_cpus, this_machine
from agent.runtime.base import Observed, RuntimeStartError
from agent.runtime.cgroups import Cgroups, Limits, confine, gpu_device_nodes
from agent.runtime.commands import job_script, shell_path
from agent.runtime.jobuser import UidRange, UidRangeError, job_uid
from agent.runtime.shim import SERVE_ARG, START_FILE, start_time
from agent.runtime.shim_server import ShimServer, ShimServerError
from shared.files import write_atomic
from shared.spec.dev_env import job_commands
from shared.states import AllocState
from shared.wire import AllocationSpec, Inventory


class ProcessRuntime:
    name = "process"

    def __init__(
        self,
        run_as: str | None,
        uids: UidRange | None = None,
        cgroups: Cgroups | None = None,
        inventory: Inventory | None = None,
        pids_limit: int = 32768,
        dev: Path = Path("/dev"),
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.run_as = run_as  # one named user for every job (the site's choice)
        self.uids = uids  # else, as root: a uid of its own per allocation; neither: the agent's own user
        self.cgroups = cgroups  # None: jobs are not confined (the agent is not root)
        self.inventory = inventory
        self.pids_limit = pids_limit
        self.dev = dev  # where the GPUs' device nodes are
        self.shims = ShimServer([*shim_command(), SERVE_ARG])  # forks each job's supervisor
        self.on_exit = on_exit  # called on the event loop when a supervisor this runtime started has ended
        self._forking: list[
            Path
        ] = []  # started allocations whose fork server answer is not read, oldest first
        self._not_started: dict[Path, str] = {}  # why, for those whose supervisor did not start

    def start(self, alloc: AllocationSpec, env: dict[str, str], alloc_dir: Path, log_file: Path) -> None:
        # Never from env["HOME"]: the spec may set HOME, and this folder is chowned to the job as root
        work_dir = alloc_dir / "work"
        work_dir.mkdir(parents=True, exist_ok=True)
        user = self._job_user(alloc_dir)
        uid, gid = (int(n) for n in user.split(":")) if user else (os.geteuid(), os.getegid())
        env, first = {**login_env(_user_name(user)), **env}, ""
        if wants_ssh(alloc):
            env, first = prepare_process(alloc, env, work_dir, uid, gid)
        if user:
            _chown_tree(work_dir, uid, gid)  # `files:` unpacked there, and `.ssh`, are the job's own
        work_dir.chmod(0o700)
        cpus = kernel_cpus(sorted(alloc.cpus), this_machine().cpus) if alloc.cpus else ()
        shell, script = shell_path(alloc.spec.shell), job_script(job_commands(alloc.spec), first=first)
        devices = gpu_device_nodes(alloc, self.inventory, self.dev) if self.inventory is not None else ()
        cgroups = confine(self.cgroups, alloc.id, Limits(cpus, alloc.memory_mib, self.pids_limit, devices))
        write_start(alloc_dir, env, cpus, cgroups)
        argv = [str(alloc_dir / "exit.json"), user, "--", shell, "-c", script]
        try:
            # The log is root's, 0600: the job writes through the descriptor it inherits, reads no other job's
            self.shims.send(argv, work_dir, log_file)
        except ShimServerError as exc:
            self._forking = []  # their answers went with the server: each shows by its shim.pid, or not
            raise RuntimeStartError(f"cannot start the job: {exc}") from exc
        self._forking.append(alloc_dir)
        if len(self._forking) == 1:  # answers a caller has not waited for are read on the loop's next turn
            _on_next_turn(self._collect_all)

    def _collect(self, alloc_dir: Path) -> None:
        """Read the fork server's answers up to `alloc_dir`'s (sent by `start`): the caller asks for the
        next start while the server forks this one. Waiting for each answer in `start` was ~40% of the
        agent's busy time in a run of 1,000 `true` tasks on one host (py-spy: ShimServer._ask)."""
        while alloc_dir in self._forking:
            forked, self._forking = self._forking[0], self._forking[1:]
            try:
                started = self.shims.answer() == 0
            except ShimServerError as exc:
                self._not_started[forked] = f"cannot start the job: {exc}"
                self._forking = []  # the later ones' answers went with the server: each shows by its shim.pid
                return
            if not started or not (forked / "shim.pid").exists():
                self._not_started[forked] = (
                    "the job's supervisor did not start; the allocation's output.log says why"
                )
            elif self.on_exit is not None:
                _watch_exit(int((forked / "shim.pid").read_text().split()[0]), self.on_exit)

    def _collect_all(self) -> None:
        if self._forking:
            self._collect(self._forking[-1])

    def _job_user(self, alloc_dir: Path) -> str:
        """ "UID:GID" for the shim, or "" (the agent's own user). Raises RuntimeStartError."""
        if os.geteuid() != 0:
            return ""
        if self.run_as:
            import pwd

            entry = pwd.getpwnam(self.run_as)
            return f"{entry.pw_uid}:{entry.pw_gid}"
        if self.uids is None:
            return ""
        try:
            uid = job_uid(alloc_dir, self.uids)
        except UidRangeError as exc:
            raise RuntimeStartError(f"job_uid_range: {exc}") from None
        return f"{uid}:{uid}"

    def observe(self, alloc_dir: Path) -> Observed:
        self._collect(alloc_dir)
        if alloc_dir in self._not_started:
            return Observed(AllocState.FAILED, None, self._not_started.pop(alloc_dir))
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
        if self.cgroups is not None and self.cgroups.version:
            self.cgroups.release(alloc_dir.name)  # what a job left behind dies with its cgroup

    def sweep(self, known_alloc_ids: Collection[str]) -> None:
        pass  # a job's supervisor and cgroup are released with its allocation's folder

    def set_inventory(self, inventory: Inventory) -> None:
        self.inventory = inventory  # the device nodes a new job may open

    def close(self) -> None:
        self.shims.close()  # the supervisors are detached: they outlive the agent by design


def _user_name(ids: str) -> str:
    """The name of the user "UID:GID" (or "", the agent's own user) stands for; a uid of the job range has
    no passwd entry and is named by its number."""
    import pwd

    uid = int(ids.split(":")[0]) if ids else os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def login_env(user: str) -> dict[str, str]:
    """What a login would set that the job env does not: who the job runs as, and its shell. Pure."""
    return {"USER": user, "LOGNAME": user, "SHELL": "/bin/sh"}


def write_start(alloc_dir: Path, env: dict[str, str], cpus: Collection[int], cgroups: list[Path]) -> None:
    """What the supervisor reads before it starts the job, in one file (START_FILE): the job's environment,
    the CPU ids to pin it to (its blocks' cores as this machine has them, agent.machine.kernel_cpus; none:
    no pinning) and the cgroup folders to join. One file, not three: each small file created was ~1.3 ms
    of the agent's loop in a run of 1,000 `true` tasks on one host (py-spy: Path.write_text under
    confine and write_cpus, 138 of 1,237 samples).

    The supervisor may run as root: it gets an isolated interpreter (-I ignores PYTHON* variables) and a
    fixed environment; the job's own environment (PYTHONPATH, LD_PRELOAD, ...) reaches only the job. 0600
    from the start; no fsync: the supervisor reads it once, at once, and a reboot ends the job."""
    start = {"env": env, "cpus": list(cpus), "cgroups": [str(c) for c in cgroups]}
    write_atomic(alloc_dir / START_FILE, json.dumps(start).encode(), mode=0o600, durable=False)


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
SHIM_ARG = "__shim__"  # a packaged (frozen) command's first argument that makes it run the supervisor


def shim_command() -> list[str]:
    """How to start a supervisor: this Python on shim.py, or, in a package built by PyInstaller (no Python of
    its own, no .py files), the frozen command itself, whose entry point runs the shim on SHIM_ARG."""
    if getattr(sys, "frozen", False):
        return [sys.executable, SHIM_ARG]
    return [sys.executable, "-I", _SHIM]


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _watch_exit(pid: int, on_exit: Callable[[], None]) -> None:
    """Call `on_exit` on the running event loop once process `pid` has ended (a pidfd: the supervisor is no
    child of the agent), so its end is seen at once rather than at the executor's next tick; a process
    already gone calls it at once. Nothing without a running loop or pidfds (Linux before 5.3): the tick
    still sees every end."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        loop.call_soon(on_exit)
        return
    except OSError:
        return

    def ended() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        on_exit()

    loop.add_reader(fd, ended)


def _on_next_turn(callback: Callable[[], None]) -> None:
    """`callback` on the running event loop's next turn; at once without a running loop."""
    try:
        asyncio.get_running_loop().call_soon(callback)
    except RuntimeError:
        callback()


def _alive(pid_file: Path) -> bool:
    try:
        pid_text, started = pid_file.read_text().split()
    except (FileNotFoundError, ValueError):
        return False
    return start_time(int(pid_text)) == started
