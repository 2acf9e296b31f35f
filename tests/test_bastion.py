"""An agent whose only route is to a login node joins, runs a job and ships its logs through an SSH tunnel
(real sshd, real network namespaces, a real coordinator process, TLS end to end), and heals when its ssh
process is killed or the bastion's sshd restarts; a changed host key stops the tunnel with a reason that
`gpuctl hosts` shows. Also the two-hop path, and two coordinators through one bastion, the first dead."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.spec import parse_spec
from tests.login_site import COORD_PORT, Site, log_text, login_site
from tests.netns import SSHD, require_tools, wait_until
from tests.sshd import fingerprint

pytestmark = pytest.mark.timeout(120)

LINES = 200
JOB = f"commands: ['for i in $(seq 1 {LINES}); do echo \"line $i\"; sleep 0.05; done']"
TUNNEL_UP = r"ssh tunnel up"


def _ssh_pid(site: Site) -> int:
    """The agent's ssh process (the only ssh in the node's namespace)."""
    ns = site.net.ns("node")
    pids = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10
    ).stdout.split()
    found = [int(p) for p in pids if Path(f"/proc/{p}/comm").read_text().strip() == "ssh"]
    assert len(found) == 1, found
    return found[0]


def _link_flags(site: Site, *hops: str, known_hosts: Path) -> list[str]:
    flags = []
    for hop in hops:
        flags += ["--bastion", f"root@{hop}:{site.bastions[_name_of(site, hop)].port}"]
    return [*flags, "--bastion-identity", str(site.client_key), "--bastion-known-hosts", str(known_hosts)]


def _name_of(site: Site, address: str) -> str:
    return next(name for name, b in site.bastions.items() if b.address == address)


def test_one_bastion_heals_a_killed_tunnel_and_a_restarted_sshd_and_stops_on_a_changed_host_key() -> None:
    require_tools(SSHD, "ssh", "ssh-keygen")
    with login_site("gb") as site:
        site.start_coordinator()
        b1 = site.add_bastion("b1", site.b1_to_node)
        known = site.trust("b1")
        site.start_agent("join", *_link_flags(site, b1.address, known_hosts=known))
        site.wait_log(TUNNEL_UP)
        assert site.api is not None
        wait_until(lambda: [h.name for h in site.api.hosts()] == ["gpu-node"], 30, "the host to join")  # type: ignore[union-attr]
        job = site.api.submit(parse_spec(JOB, environ={}))
        wait_until(lambda: site.api.job(job.id).status == "running", 30, "the job to run")  # type: ignore[union-attr]

        killed_at = time.monotonic()
        os.kill(_ssh_pid(site), signal.SIGKILL)
        healed_kill_s = site.wait_log(TUNNEL_UP, 2, timeout_s=20) - killed_at

        restarted_at = time.monotonic()
        b1.restart()  # sshd and every session it served
        healed_restart_s = site.wait_log(TUNNEL_UP, 3, timeout_s=30) - restarted_at

        text = log_text(site, job.id)
        numbered = [line for line in text.splitlines() if line.startswith("line ")]
        assert numbered == [f"line {i}" for i in range(1, LINES + 1)]  # none lost, none twice
        assert site.api.job(job.id).status == "done"
        print(f"healed: killed ssh {healed_kill_s:.1f} s, restarted sshd {healed_restart_s:.1f} s")

        detail = site.host_detail_output()
        assert f"reaches the coordinator: bastion {b1.address}:{b1.port}" in detail

        b1.restart(new_host_key=True)
        new_fp = fingerprint(Path(f"{b1.host_key}.pub"))
        site.wait_log(
            re.escape(f"bastion {b1.address}:{b1.port} changed its host key (now {new_fp})"), timeout_s=30
        )
        time.sleep(1.5)
        assert "ssh tunnel up" not in site.agent_log.read_text().split("changed its host key")[-1]  # stopped

        site.trust("b1")  # the operator checks the new key and puts it in known_hosts: the tunnel comes back
        site.wait_log(TUNNEL_UP, 4, timeout_s=30)
        wait_until(lambda: "changed its host key" in site.hosts_output(), 30, "gpuctl hosts to say why")
        line = next(x for x in site.hosts_output().splitlines() if "gpu-node" in x)
        assert f"bastion {b1.address}:{b1.port} changed its host key (now {new_fp})" in line


def test_two_hops_and_a_join_that_cannot_pass_says_why() -> None:
    require_tools(SSHD, "ssh", "ssh-keygen")
    with login_site("gh") as site:
        site.start_coordinator()
        b1 = site.add_bastion("b1", site.b1_to_node)
        b2 = site.add_bastion("b2", site.b2)
        flags = _link_flags(site, b1.address, b2.address, known_hosts=site.trust("b1"))  # b2's key unknown
        refused = site.net.run("node", site.agent_argv("join", *flags), timeout_s=60)
        assert refused.returncode != 0
        b2_fp = fingerprint(Path(f"{b2.host_key}.pub"))
        expected = f"bastion {b2.address}:{b2.port} has a host key not in known_hosts ({b2_fp})"
        assert expected in refused.stderr, refused.stderr
        assert site.api is not None and site.api.hosts() == []

        flags = _link_flags(site, b1.address, b2.address, known_hosts=site.trust("b1", "b2"))
        site.start_agent("join", *flags)
        site.wait_log(TUNNEL_UP)
        job = site.api.submit(parse_spec("commands: ['echo through two hops']", environ={}))
        assert log_text(site, job.id) == "through two hops\n"
        detail = site.host_detail_output()
        assert f"bastion {b1.address}:{b1.port} → {b2.address}:{b2.port}" in detail


def test_through_a_bastion_a_dead_first_coordinator_is_passed_over_for_the_next() -> None:
    """One ssh process forwards a socket to each coordinator; the first URL has nothing listening behind the
    bastion, so each connection through its socket is dropped, and the agent moves to the second."""
    require_tools(SSHD, "ssh", "ssh-keygen")
    with login_site("gf") as site:
        site.start_coordinator()
        b1 = site.add_bastion("b1", site.b1_to_node)
        dead = f"https://{site.coord}:{COORD_PORT + 1}"
        flags = _link_flags(site, b1.address, known_hosts=site.trust("b1"))
        site.start_agent("join", *flags, urls=(dead, site.url))
        site.wait_log(TUNNEL_UP)
        assert site.api is not None
        job = site.api.submit(parse_spec("commands: ['echo past the dead one']", environ={}))
        assert log_text(site, job.id) == "past the dead one\n"
        assert f"joining at {dead} failed" in site.agent_log.read_text()
        assert f"{site.coord}:{COORD_PORT + 1}, {site.coord}:{COORD_PORT}" in site.agent_log.read_text()
