"""An ssh stream (`gpuctl ssh`, `scp`, VS Code's Remote-SSH, through `gpuctl ssh-proxy`): the user's public
key goes into the dev environment's `authorized_keys`, then the stream is a TCP connection to the job's
sshd on this host's loopback (agent/job_ssh.py starts it with the job, at the port the coordinator chose).

The coordinator lets only members of the job's project open one; the key only gets them past the job's
own sshd, which the host's network does not reach from outside."""

from __future__ import annotations

import asyncio

from agent.executor import Executor
from agent.job_ssh import authorize, wants_ssh
from agent.stream_tcp import LOOPBACK, run_tcp
from agent.streams import Stream, StreamRefused, running_alloc
from shared.channel import SshOpen, TcpOpen

SSHD_START_S = 10.0


async def run_ssh(stream: Stream, what: SshOpen, executor: Executor) -> int | None:
    local = running_alloc(executor, what.alloc_id)
    if not wants_ssh(local.spec) or local.spec.nodes_num > 1:
        raise StreamRefused(f"allocation {what.alloc_id} is no dev environment: it runs no sshd to reach")
    try:
        authorize(local.dir / "work", what.public_key)
    except FileNotFoundError:
        raise StreamRefused(
            "the job's sshd is not set up: its log says why (openssh-server, libnss-wrapper)"
        ) from None
    except OSError as exc:  # the job replaced its .ssh or authorized_keys (a link): never followed
        raise StreamRefused(f"the job's .ssh is not as its agent made it: {exc.strerror or exc}") from None
    await _sshd_listening(local.spec.ssh_port)
    return await run_tcp(stream, TcpOpen(what.alloc_id, local.spec.ssh_port), executor)


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
