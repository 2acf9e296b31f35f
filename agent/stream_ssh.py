"""An ssh stream (`gpuctl ssh`, `scp`, VS Code's Remote-SSH, through `gpuctl ssh-proxy`): the user's public
key goes into the dev environment's `authorized_keys`, then the stream is a TCP connection to the job's
sshd on this host's loopback (agent/job_ssh.py starts it with the job, at the port the coordinator chose).

The coordinator lets only members of the job's project open one; the key only gets them past the job's
own sshd, which the host's network does not reach from outside. The key stays in only while a stream of
its own is open: any job on this host reaches the sshd's loopback port (as `port-forward` does), and a key
left behind would let whoever left the project in through a job of theirs here."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent.executor import Executor
from agent.job_ssh import authorize, unauthorize, wants_ssh
from agent.stream_tcp import LOOPBACK, run_tcp
from agent.streams import Stream, StreamRefused, running_alloc
from shared.channel import SshOpen, TcpOpen

SSHD_START_S = 10.0
# The streams open with each key this agent added, by (allocation, key): the key goes at the last one's end
_LEASES: dict[tuple[str, str], int] = {}


async def run_ssh(stream: Stream, what: SshOpen, executor: Executor) -> int | None:
    local = running_alloc(executor, what.alloc_id)
    if not wants_ssh(local.spec) or local.spec.nodes_num > 1:
        raise StreamRefused(f"allocation {what.alloc_id} is no dev environment: it runs no sshd to reach")
    work, lease = local.dir / "work", (what.alloc_id, what.public_key)
    try:
        added = authorize(work, what.public_key)
    except FileNotFoundError:
        raise StreamRefused(
            "the job's sshd is not set up: its log says why (openssh-server, libnss-wrapper)"
        ) from None
    except OSError as exc:  # the job replaced its .ssh or authorized_keys (a link): never followed
        raise StreamRefused(f"the job's .ssh is not as its agent made it: {exc.strerror or exc}") from None
    if added or lease in _LEASES:  # a key the job itself holds is never taken out
        _LEASES[lease] = _LEASES.get(lease, 0) + 1
    try:
        await _sshd_listening(local.spec.ssh_port)
        return await run_tcp(stream, TcpOpen(what.alloc_id, local.spec.ssh_port), executor)
    finally:
        _release(work, lease)


def _release(work: Path, lease: tuple[str, str]) -> None:
    """One stream with the key ended: the last takes the key out (if the job's .ssh is gone or replaced,
    so is the key)."""
    if lease not in _LEASES:
        return
    _LEASES[lease] -= 1
    if not _LEASES[lease]:
        del _LEASES[lease]
        with contextlib.suppress(OSError):
            unauthorize(work, lease[1])


async def _sshd_listening(port: int) -> None:
    """Wait up to SSHD_START_S for the job's sshd to listen: it starts with the job, so a session asked for
    as the job turns running may come first. A connection made to find out is closed at once (the sshd
    logs nothing for it at its LogLevel ERROR); one that fails to the end leaves run_tcp to say why."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SSHD_START_S
    while True:
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            if loop.time() >= deadline:
                return
            await asyncio.sleep(0.1)
        else:
            writer.close()
            return
