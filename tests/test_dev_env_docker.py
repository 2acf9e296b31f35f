"""`gpuctl ssh` into a dev environment in a container: a real Docker engine, the image's own sshd (busybox
with the host's OpenSSH, as dstack's images carry one), and the real `ssh` client over the agent's channel."""

from __future__ import annotations

import os

import pytest

from tests.docker_engine import Engine
from tests.harness import cluster
from tests.test_dev_env import cli_env, ended_sessions, gpuctl
from tests.test_docker import start_docker_agent, wait_for_host
from tests.test_multi_node_ssh import sshd_image_fixture

__all__ = ["sshd_image_fixture"]
pytestmark = pytest.mark.timeout(180)


async def test_ssh_runs_in_the_dev_environments_container_as_the_images_user(
    docker_engine: Engine, sshd_image: str
) -> None:
    async with cluster() as c:
        start_docker_agent(c, docker_engine, "dock-a")
        await wait_for_host(c, "dock-a")
        job = await c.submit(
            f"type: dev-environment\nname: boxed\nimage: {sshd_image}\ninit: ['echo init ran > /workflow/mark']\n"
        )
        await c.wait_for(job.id, "running")
        env = cli_env(c, c.api.config.token, "admin")
        ran = await gpuctl(
            env, "ssh", job.id, "--", "cat /workflow/mark; id -un; readlink /proc/self/ns/mnt; exit 5"
        )
        assert ran.code == 5, ran.err
        mark, user, mounts = ran.out.splitlines()
        assert (mark, user) == ("init ran", "root")
        assert mounts != os.readlink("/proc/self/ns/mnt")  # the session ran in the container
        assert [(e.kind, e.who) for e in await ended_sessions(c, job.id)] == [("ssh", "admin")]
