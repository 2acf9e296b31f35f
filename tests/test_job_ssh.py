"""The ssh set-up of a multi-node job's node (agent/job_ssh.py), read back with OpenSSH's own tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent import job_ssh
from agent.job_ssh import (
    SSHD,
    authorize,
    prepare_process,
    session_environment,
    ssh_files,
    unauthorize,
    write_ssh_files,
)
from shared.job_keys import job_keys
from shared.spec import parse_spec
from shared.wire import AllocationSpec

SEED = "11" * 32


def node(rank: int, seed: str = SEED) -> AllocationSpec:
    return AllocationSpec(
        id=f"a-{rank}",
        job_id="j",
        job_name="pair",
        desired="run",
        spec=parse_spec("nodes: 2\ncommands: [hostname]\n"),
        blocks=(0,),
        gpus=(0,),
        cpus=(0,),
        memory_mib=1024,
        node_rank=rank,
        nodes_num=2,
        master_addr="10.0.0.1",
        nodes_ips=("10.0.0.1", "10.0.0.2"),
        ssh_port=10023,
        ssh_seed=seed,
    )


def public_of(private_file: Path) -> str:
    """The public key OpenSSH's ssh-keygen reads out of a private key file."""
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private_file)], capture_output=True, text=True, check=True
    )
    return " ".join(out.stdout.split()[:2])


def test_every_node_derives_the_same_keys_and_another_job_other_ones() -> None:
    mine, theirs = job_keys(SEED), job_keys("22" * 32)
    assert (mine.user_public, mine.host_public) == (job_keys(SEED).user_public, job_keys(SEED).host_public)
    assert mine.user_public != mine.host_public
    assert {mine.user_public, mine.host_public}.isdisjoint({theirs.user_public, theirs.host_public})


def test_the_files_hold_the_jobs_keys_and_pin_its_host_key(tmp_path: Path) -> None:
    files = ssh_files(node(0), "/home/job", in_container=False)
    write_ssh_files(files, tmp_path)
    ssh = tmp_path / ".ssh"
    keys = job_keys(SEED)
    assert public_of(ssh / "id_ed25519") == keys.user_public  # a key file OpenSSH reads
    assert public_of(ssh / "ssh_host_ed25519_key") == keys.host_public
    assert (ssh / "authorized_keys").read_text() == keys.user_public + "\n"
    assert (ssh / "known_hosts").read_text().splitlines() == [
        f"[10.0.0.1]:10023 {keys.host_public}",
        f"[10.0.0.2]:10023 {keys.host_public}",
    ]
    config = (ssh / "config").read_text()
    assert config.startswith("Host 10.0.0.1 10.0.0.2\n    Port 10023\n")
    assert "StrictHostKeyChecking yes" in config and "StrictHostKeyChecking no" not in config
    assert {
        p.name: p.stat().st_mode & 0o777 for p in ssh.iterdir() if "id_" in p.name or "host" in p.name
    } == {
        "id_ed25519": 0o600,
        "id_ed25519.pub": 0o644,
        "ssh_host_ed25519_key": 0o600,
        "known_hosts": 0o644,
    }


def test_each_nodes_sshd_listens_on_its_own_address_at_the_jobs_port(tmp_path: Path) -> None:
    for rank, ip in ((0, "10.0.0.1"), (1, "10.0.0.2")):
        server = ssh_files(node(rank), str(tmp_path), in_container=False)["sshd_config"][0]
        assert f"Port 10023\nListenAddress {ip}\n" in server
        assert "PasswordAuthentication no" in server
        write_ssh_files(ssh_files(node(rank), str(tmp_path), in_container=False), tmp_path)
        # OpenSSH's test mode (-t) checks the file and its host key
        subprocess.run([SSHD, "-t", "-f", str(tmp_path / ".ssh" / "sshd_config")], check=True)


def test_sessions_get_the_jobs_variables_but_those_spanning_lines() -> None:
    text = session_environment(
        {"GPUCTL_NODE_RANK": "1", "GPUCTL_NODES_IPS": "10.0.0.1\n10.0.0.2", "A": "x=y"}
    )
    assert text == "GPUCTL_NODE_RANK=1\nA=x=y\n"


def test_a_host_without_sshd_runs_the_job_and_its_log_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_ssh, "SSHD", str(tmp_path / "no-sshd"))  # this machine has one: pretend not
    env, first = prepare_process(node(1), {"PATH": "/bin"}, tmp_path, 1000, 1000)
    said = subprocess.run(["sh", "-c", first], capture_output=True, text=True, check=True)
    assert env == {"PATH": "/bin"} and not (tmp_path / ".ssh").exists()
    assert (
        said.stderr
        == f"gpuctl: no ssh between the nodes of this job: this host has no {tmp_path}/no-sshd (openssh-server)\n"
    )


def test_a_persons_key_is_added_beside_the_jobs_and_only_once(tmp_path: Path) -> None:
    write_ssh_files(ssh_files(node(0), "/home/job", in_container=False), tmp_path)
    keys = tmp_path / ".ssh" / "authorized_keys"
    before = keys.read_text()
    assert authorize(tmp_path, "ssh-ed25519 AAAAperson me@laptop")
    assert not authorize(tmp_path, "ssh-ed25519 AAAAperson me@laptop")
    assert keys.read_text() == before + "ssh-ed25519 AAAAperson me@laptop\n"
    assert oct(keys.stat().st_mode & 0o777) == oct(0o600)
    unauthorize(tmp_path, "ssh-ed25519 AAAAperson me@laptop")  # the last session with it ended
    assert keys.read_text() == before


@pytest.mark.parametrize("link", ["authorized_keys", ".ssh"])
def test_a_link_the_job_put_in_its_ssh_folder_is_never_followed(tmp_path: Path, link: str) -> None:
    """The job's user owns its work dir: a link from its authorized_keys (or its .ssh) to root's must not
    have the agent, as root, add a person's key there."""
    work, outside = tmp_path / "work", tmp_path / "root-ssh"
    work.mkdir()
    outside.mkdir()
    write_ssh_files(ssh_files(node(0), "/home/job", in_container=False), work)
    (outside / "authorized_keys").write_text("ssh-ed25519 AAAAroot root@host\n")
    target = work / ".ssh" / "authorized_keys" if link == "authorized_keys" else work / ".ssh"
    if link == ".ssh":
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    target.symlink_to(outside / "authorized_keys" if link == "authorized_keys" else outside)
    with pytest.raises(OSError):
        authorize(work, "ssh-ed25519 AAAAperson me@laptop")
    assert (outside / "authorized_keys").read_text() == "ssh-ed25519 AAAAroot root@host\n"
