"""`gpuctl ssh` travels the agent's own route: a dev environment on a host whose only way out is an SSH
tunnel through a login node is still reached by the real `ssh` (real sshd bastion and network namespaces, a
coordinator process, the real CLI)."""

from __future__ import annotations

import subprocess

import pytest

from shared.spec import parse_spec
from tests.login_site import login_site
from tests.netns import SSHD, require_tools, wait_until
from tests.test_channel_routes import CHANNEL_OPEN, GPUCTL, _cli_env
from tests.test_dev_env import need_ssh

pytestmark = pytest.mark.timeout(120)


def test_gpuctl_ssh_reaches_a_dev_environment_behind_a_bastion() -> None:
    require_tools(SSHD, "ssh", "ssh-keygen", "busybox")
    need_ssh()
    with login_site("gs") as site:
        site.start_coordinator()
        site.join_behind_bastion()
        api = site.api
        assert api is not None
        wait_until(lambda: [h.name for h in api.hosts()] == ["gpu-node"], 30, "the host to join")
        job = api.submit(parse_spec("type: dev-environment\ninit: ['echo behind the bastion > mark']"))
        wait_until(lambda: api.job(job.id).status == "running", 30, "the dev environment to run")
        site.wait_log(CHANNEL_OPEN)
        done = subprocess.run(
            [*GPUCTL, "ssh", job.id, "--", "cat mark; exit 3"],
            env=_cli_env(site), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (3, "behind the bastion\n"), done.stderr
