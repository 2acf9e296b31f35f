"""Whether a job itself listens on a port of this host's loopback: what a tcp stream (`gpuctl port-forward`)
checks before it connects.

Every job of a host shares the host's network (plain processes, and containers on the host's network), so
127.0.0.1:PORT may be another project's job, the agent's own relays, or a server of the host that trusts
its loopback. A stream reaches a port only while the job's own processes hold the sockets listening there
on an address that 127.0.0.1 reaches (127.0.0.1, or any address). The job's processes: those of its
own cgroups (a plain-process job's, when the agent confines jobs; a container's), else the tree under its
supervisor. A plain-process job's sockets are also those its uid holds: a uid of its own, or the one a site
shares between all jobs with `run_as` (which gives up keeping jobs apart: README), where jobs of one service
on one machine listen on one port together (SO_REUSEPORT needs one uid). Reads /proc and the kernel's socket diagnostics; blocking, so the caller runs it in a thread.
The check comes just before the connection: only a server that takes the port in the instant after the job
closed its socket would be reached instead, which the job cannot arrange.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

NETLINK_SOCK_DIAG = 4

_SOCK_DIAG_BY_FAMILY, _NLMSG_DONE, _NLMSG_ERROR = 20, 3, 2
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_TCP_LISTEN = 10
_HEADER = struct.Struct("=LHHLL")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, extensions, states; any socket id
_ANSWER = struct.Struct("=4x2s2x16s16x4x8x12xII")  # inet_diag_msg: source port and address, uid, inode
_V4_LOOPBACK, _V4_ANY = socket.inet_aton("127.0.0.1"), bytes(4)
_V6_ANY, _V6_MAPPED_LOOPBACK = bytes(16), socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")


def job_listens(root_pid: int, cgroups: Iterable[str], port: int, uid: int | None = None) -> bool:
    """Does the job (its processes: under `root_pid`, or in its own `cgroups`; and the sockets of `uid`, a
    plain-process job's own, never root's) hold every socket that a connection to 127.0.0.1:`port` may
    reach? Every one, not one of them: the job's [::]:PORT, made IPv6 only, does not make another's
    127.0.0.1:PORT the job's."""
    folders = list(cgroups)
    reached = _listening(port)
    owned = {link for link, owner in reached.items() if uid and owner == uid}
    if not reached or owned == reached.keys():
        return bool(reached)
    pids = _cgroup_pids(folders) if folders else _tree(root_pid)
    return reached.keys() <= _sockets_of(pids, set(reached)) | owned


def _sockets_of(pids: set[int], wanted: set[str]) -> set[str]:
    """Those of `wanted` that the processes `pids` hold."""
    held = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link in wanted:
                held.add(link)
    return held


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


def _listening(port: int) -> dict[str, int]:
    """The sockets (as /proc/PID/fd links name them) listening on `port` at an address that 127.0.0.1
    reaches, in this agent's network namespace (where it connects), with their owners' uids: the kernel's
    socket diagnostics, which list listening sockets alone (/proc/net/tcp walks every connection of the
    host: ~4 ms each)."""
    found = {}
    for family, reaching in (
        (socket.AF_INET, (_V4_LOOPBACK, _V4_ANY)),
        (socket.AF_INET6, (_V6_ANY, _V6_MAPPED_LOOPBACK)),
    ):
        for sport, address, owner, inode in _listeners(family):
            if int.from_bytes(sport, "big") == port and address[: len(reaching[0])] in reaching:
                found[f"socket:[{inode}]"] = owner
    return found


def _listeners(family: int) -> list[tuple[bytes, bytes, int, int]]:
    """(port, address, uid, inode) of each TCP socket of `family` that listens, from a NETLINK_SOCK_DIAG dump."""
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 1 << _TCP_LISTEN)
    answers: list[tuple[bytes, bytes, int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
        diag.sendall(
            _HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0)
            + request
        )
        while True:
            data, offset = diag.recv(65536), 0
            while offset < len(data):
                length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    return answers
                if kind == _NLMSG_ERROR:
                    raise OSError(f"socket diagnostics refused the dump of family {family}")
                answers.append(_ANSWER.unpack_from(data, offset + _HEADER.size))
                offset += (length + 3) & ~3


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
