"""Whether a job itself listens on a port of this host's loopback: what a tcp stream (`gpuctl port-forward`)
checks before it connects.

Every job of a host shares the host's network (plain processes, and containers on the host's network), so
127.0.0.1:PORT may be another project's job, the agent's own relays, or a server of the host that trusts
its loopback. A stream reaches a port only while one of the job's own processes holds a socket listening
there, on an address that 127.0.0.1 reaches (127.0.0.1, or any address). The job's processes: those of its
own cgroups (a plain-process job's, when the agent confines jobs; a container's), else the tree under its
supervisor. Reads /proc only; blocking, so the caller runs it in a thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

_LISTEN = "0A"  # the state column of /proc/net/tcp
_LOOPBACK_REACHES = {
    "0100007F",  # 127.0.0.1, as the kernel prints it (little-endian)
    "00000000",  # 0.0.0.0
    "00000000000000000000000000000000",  # ::, which takes IPv4 too unless IPV6_V6ONLY
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
}


def job_listens(root_pid: int, cgroups: Iterable[str], port: int) -> bool:
    """Does a process of the job (under `root_pid`, or in its own `cgroups`) listen on `port`?"""
    folders = list(cgroups)
    pids = _cgroup_pids(folders) if folders else _tree(root_pid)
    sockets = _listening(pids, port)
    if not sockets:
        return False
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    return True
            except OSError:
                continue
    return False


def own_cgroups(pid: int) -> list[str]:
    """The cgroup folders of process `pid` (a container's first process: its container's own), as
    `job_listens` takes them: cgroup v2's one, or v1's pids controller's."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if path != "/" and (controllers == "" or "pids" in controllers.split(",")):
            return [f"/sys/fs/cgroup{path}" if controllers == "" else f"/sys/fs/cgroup/pids{path}"]
    return []


def _listening(pids: set[int], port: int) -> set[str]:
    """The sockets (as /proc/PID/fd links name them) listening on `port` in the job's network namespace
    (its processes share one: the first still there tells)."""
    addresses = {f"{address}:{port:04X}" for address in _LOOPBACK_REACHES}
    for pid in pids:
        try:
            rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:  # gone meanwhile
            continue
        with contextlib.suppress(OSError):  # a kernel without IPv6 has no tcp6
            rows += Path(f"/proc/{pid}/net/tcp6").read_text().splitlines()[1:]
        listening = (row.split() for row in rows)
        return {f"socket:[{f[9]}]" for f in listening if f[3] == _LISTEN and f[1] in addresses}
    return set()


def _cgroup_pids(folders: list[str]) -> set[int]:
    pids: set[int] = set()
    for folder in folders:
        for below, _, _ in os.walk(folder):
            try:
                pids.update(int(n) for n in Path(below, "cgroup.procs").read_text().split())
            except OSError:
                continue
    return pids


def _tree(root_pid: int) -> set[int]:
    """`root_pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    pids, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        todo.extend(children.get(pid, []))
    return pids
