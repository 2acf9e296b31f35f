"""An ssh stream (`gpuctl ssh`, `scp`, VS Code's Remote-SSH, through `gpuctl ssh-proxy`): the user's public
key goes into the dev environment's `authorized_keys`, then the stream is a TCP connection to the job's
sshd on this host's loopback (agent/job_ssh.py starts it with the job, at the port the coordinator chose).

The coordinator lets only members of the job's project open one; the key only gets them past the job's
own sshd, which the host's network does not reach from outside."""

from __future__ import annotations

from agent.executor import Executor
from agent.job_ssh import authorize, wants_ssh
from agent.stream_tcp import run_tcp
from agent.streams import Stream, StreamRefused, running_alloc
from shared.channel import SshOpen, TcpOpen


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
    return await run_tcp(stream, TcpOpen(what.alloc_id, local.spec.ssh_port), executor)
