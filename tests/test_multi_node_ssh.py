"""ssh and MPI between the nodes of one job, end to end: a real coordinator, two real agents as two simulated
hosts with distinct internal IPs (127.0.0.1 and 127.0.0.2), each node's real sshd (OpenSSH) as the job's own
uid, real `ssh` and Debian's Open MPI `mpirun`; and a two-node job in containers of a real Docker engine."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import DockerConfig
from agent.job_ssh import SSHD, nss_wrapper
from tests.docker_engine import Engine, busybox_rootfs, busybox_static
from tests.git_http import git_http_server
from tests.harness import Cluster, cluster, reachable_tmpdir
from tests.real_parts import part_missing
from tests.test_container_isolation import commands, member_of, submit
from tests.test_multi_node import all_nodes_ended, cluster_fleet, shared_folder, start_hosts, until_nodes

pytestmark = pytest.mark.asyncio


def need_ssh_and_mpi() -> None:
    """Fail under CI, skip elsewhere, when a real part is missing (scripts/test installs them)."""
    for what, present in (
        ("openssh-server", Path(SSHD).exists()),
        ("openssh-client", shutil.which("ssh") is not None),
        ("libnss-wrapper", nss_wrapper() is not None),
        ("openmpi-bin", shutil.which("mpirun") is not None),
    ):
        if not present:
            part_missing(f"needs {what}")


def peer_job(name: str, out: Path | str, node_0: list[str], every_node: tuple[str, ...] = ()) -> str:
    """A two-node job: each node runs `every_node`, then node 0 runs `node_0` and says it is done; node 1
    waits for that (its sshd must outlive node 0's use of it)."""
    done = f"{out}/{name}-done"
    return f"name: {name}\nnodes: 2\nresources: {{gpu: 2}}\n" + commands(
        *every_node,
        'peer=$(echo "$GPUCTL_NODES_IPS" | sed -n 2p)',
        'if [ "$GPUCTL_NODE_RANK" = 1 ]; then until [ -e ' + done + " ]; do sleep 0.1; done; exit 0; fi",
        *node_0,
        f"touch {done}",
    )


async def test_node_0_runs_a_command_on_node_1_over_ssh_and_mpirun_reaches_both_nodes() -> None:
    need_ssh_and_mpi()
    async with cluster() as c:
        out = shared_folder(c)
        await start_hosts(c, "a", "b")
        job = await c.submit(
            peer_job(
                "mpi",
                out,
                [
                    f"ssh $peer 'echo rank=$GPUCTL_NODE_RANK user=$(id -un) uid=$(id -u)' > {out}/ssh",
                    f"echo me=$(id -u) >> {out}/ssh",
                    # dstack's nccl-tests form: every GPU of every node a rank
                    "mpirun --hostfile $GPUCTL_MPI_HOSTFILE -n $GPUCTL_GPUS_NUM -N $GPUCTL_GPUS_PER_NODE"
                    f" --bind-to none sh -c 'echo rank $OMPI_COMM_WORLD_RANK node $GPUCTL_NODE_RANK' > {out}/mpi",
                ],
            )
        )
        done = await c.wait_for(job.id, "done", "failed", "stopped")
        await all_nodes_ended(c, job.id)
        log = (await c.full_log(job.id)).decode()
        assert done.status == "done", log
        remote, me = (out / "ssh").read_text().splitlines()
        ranks = (out / "mpi").read_text().splitlines()
    rank, user, uid = remote.split()
    assert (rank, user) == ("rank=1", "user=gpuctl-job")  # node 1's own environment, as its own user
    assert uid != me.replace("me=", "uid=")  # another uid: the session ran on the other node
    assert sorted(ranks) == [
        "rank 0 node 0",
        "rank 1 node 0",
        "rank 2 node 1",
        "rank 3 node 1",
    ]


async def test_another_jobs_key_and_files_do_not_let_it_in() -> None:
    need_ssh_and_mpi()
    async with cluster() as c:
        out = shared_folder(c)
        await cluster_fleet(c)
        for i, name in enumerate(("a", "b")):
            c.start_agent(name, "4xH100:80GB", internal_ip=f"127.0.0.{i + 1}")
        alpha, beta = await member_of(c, "alpha"), await member_of(c, "beta")
        first = await submit(alpha, peer_job("first", out, [f"until [ -e {out}/tried ]; do sleep 0.1; done"]))
        store = c.coordinator.coordinator.store
        await until_nodes(c, first.id, lambda allocs: [a.state.value for a in allocs] == ["running"] * 2)
        allocs = store.allocations_of(first.id)
        port, key = (
            allocs[0].ssh_port,
            c.root / "b" / "allocs" / allocs[1].id / "work" / ".ssh" / "id_ed25519",
        )
        second = await submit(
            beta,
            peer_job(
                "second",
                out,
                [
                    f"cat {key} || echo key unreadable",
                    f"said=$(ssh -p {port} -o BatchMode=yes -o StrictHostKeyChecking=no"
                    " -o UserKnownHostsFile=/dev/null $peer true 2>&1) && echo ssh LEAK || echo ssh: $said",
                    f"touch {out}/tried",
                ],
            ),
        )
        assert (await c.wait_for(second.id, "done", "failed")).status == "done"
        assert (await c.wait_for(first.id, "done", "failed")).status == "done"
        await all_nodes_ended(c, second.id)
        log = (await c.full_log(second.id)).decode()
        second_port = store.allocations_of(second.id)[0].ssh_port
    assert second_port != port  # their sshds share the two hosts, never a port
    assert "key unreadable" in log and "Permission denied (publickey)" in log, log
    assert "LEAK" not in log and "PRIVATE KEY" not in log, log


def repo_of_links(repo: Path, links: dict[str, Path]) -> None:
    """A git repository of one commit that holds these links (name: target)."""
    repo.mkdir()
    for name, target in links.items():
        (repo / name).symlink_to(target)
    for args in (("init", "-q"), ("add", "."), ("commit", "-qm", "links")):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo, check=True
        )


async def test_links_a_jobs_repo_puts_where_the_agent_writes_are_replaced_not_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent writes `.ssh` and the hostfile as root into the work dir, which the job's repository filled:
    a link it holds there (`.ssh -> /etc`) must not let the job write root's files."""
    need_ssh_and_mpi()
    for name in ("no_proxy", "NO_PROXY"):  # git takes the agent's proxy variables: not for the local server
        monkeypatch.setenv(name, "127.0.0.1")
    root = reachable_tmpdir()
    etc, preload = root / "etc", root / "ld.so.preload"
    etc.mkdir()
    (etc / "environment").write_text("KEPT=1\n")
    preload.write_text("kept\n")
    repo_of_links(root / "links", {".ssh": etc, ".gpuctl_mpi_hostfile": preload})
    try:
        with git_http_server(root) as base:
            async with cluster() as c:
                out = shared_folder(c)
                await start_hosts(c, "a", "b")
                job = await c.submit(
                    peer_job("links", out, [f"ssh $peer echo ssh reached node 1 > {out}/ssh"])
                    + f"repos: [{{url: '{base}/links', path: .}}]\n"
                )
                done = await c.wait_for(job.id, "done", "failed", "stopped")
                await all_nodes_ended(c, job.id)
                log = (await c.full_log(job.id)).decode()
                said = (out / "ssh").read_text() if (out / "ssh").exists() else ""
        assert (done.status, said) == ("done", "ssh reached node 1\n"), log
        assert [p.name for p in etc.iterdir()] == ["environment"] and etc.stat().st_mode & 0o777 == 0o755
        assert ((etc / "environment").read_text(), preload.read_text()) == ("KEPT=1\n", "kept\n")
    finally:
        shutil.rmtree(root)


async def docker_hosts(c: Cluster, engine: Engine, out: Path, *names: str) -> None:
    """Two simulated hosts of a cluster fleet whose agents run jobs in `engine`'s containers, which may mount
    `out`."""
    await cluster_fleet(c)
    for i, name in enumerate(names):
        c.start_agent(
            name,
            "2xH100:80GB",
            internal_ip=f"127.0.0.{i + 1}",
            docker=DockerConfig(socket=engine.socket, volume_prefixes=(str(out),)),
        )


async def test_a_two_node_container_job_is_on_the_hosts_network_with_its_hostfile_and_ssh_config(
    docker_engine: Engine,
) -> None:
    async with cluster() as c:
        out = shared_folder(c)
        await docker_hosts(c, docker_engine, out, *("da", "db"))
        job = await c.submit(
            f"name: boxes\nnodes: 2\nimage: {docker_engine.image}\nresources: {{gpu: 2}}\n"
            f"volumes: [{out}:/out]\n"
            + commands(
                "f=/out/node-$GPUCTL_NODE_RANK",
                "echo net=$(readlink /proc/self/ns/net) > $f",
                'echo "hostfile=$GPUCTL_MPI_HOSTFILE" >> $f',
                "sed 's/^/line: /' $GPUCTL_MPI_HOSTFILE >> $f",
                "grep -h -e Port -e '^Host ' $HOME/.ssh/config >> $f",
            )
        )
        done = await c.wait_for(job.id, "done", "failed", "stopped")
        await all_nodes_ended(c, job.id)
        log = (await c.full_log(job.id)).decode()
        port = c.coordinator.coordinator.store.allocations_of(job.id)[0].ssh_port
        assert done.status == "done", log
        assert log.startswith(  # the image has none: node 0's log says why its nodes cannot ssh
            f"gpuctl: no ssh between the nodes of this job: the image has no {SSHD} (openssh-server)\n"
        ), log
        seen = {rank: (out / f"node-{rank}").read_text().splitlines() for rank in (0, 1)}
    for rank in (0, 1):
        assert seen[rank] == [
            f"net={os.readlink('/proc/self/ns/net')}",  # the host's own network namespace
            "hostfile=/workflow/.gpuctl_mpi_hostfile",
            "line: 127.0.0.1 slots=2",
            "line: 127.0.0.2 slots=2",
            "Host 127.0.0.1 127.0.0.2",
            f"    Port {port}",
        ]


SSH_IMAGE = "gpuctl-test/busybox-sshd"  # tagged per use: tests on other workers share the engine
SSH_PROGRAMS = ("/usr/sbin/sshd", "/usr/bin/ssh")
IMAGE_PATH = "/usr/local/mpi/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def with_host_files(rootfs: bytes, paths: list[str], passwd: bytes) -> bytes:
    """`rootfs` (a tar) with these host files at their own paths (symlinks resolved) and this passwd."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(rootfs)) as base, tarfile.open(fileobj=out, mode="w") as tar:
        for member in base.getmembers():
            if member.name != "etc/passwd":  # the engine refuses a path twice in one layer
                tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        for path in paths:
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
        entry = tarfile.TarInfo("etc/passwd")
        entry.size = len(passwd)
        tar.addfile(entry, io.BytesIO(passwd))
    return out.getvalue()


def libraries_of(programs: tuple[str, ...]) -> list[str]:
    """The shared libraries (and the loader) the programs load, as `ldd` lists them."""
    out = subprocess.run(["ldd", *programs], capture_output=True, text=True, check=True).stdout
    return sorted({word for word in out.split() if word.startswith("/") and not word.endswith(":")})


@pytest.fixture(scope="module", name="sshd_image")
def sshd_image_fixture(docker_engine: Engine) -> Iterator[str]:
    """A job image with an sshd and an ssh, as dstack's images have: busybox plus the host's OpenSSH
    programs and their libraries (no registry needed), with sshd's privilege separation user, and a PATH of
    its own, as NVIDIA's images have (their Open MPI is in /usr/local/mpi/bin)."""
    need_ssh_and_mpi()
    passwd = b"root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n"
    rootfs = with_host_files(
        busybox_rootfs(busybox_static()), [*SSH_PROGRAMS, *libraries_of(SSH_PROGRAMS)], passwd
    )
    tag = secrets.token_hex(4)
    docker_engine.client.api.import_image_from_data(
        rootfs, repository=SSH_IMAGE, tag=tag, changes=[f"ENV PATH={IMAGE_PATH}"]
    )
    yield f"{SSH_IMAGE}:{tag}"
    docker_engine.client.api.remove_image(f"{SSH_IMAGE}:{tag}", force=True)


async def test_node_0_of_a_container_job_runs_a_command_in_node_1s_container_over_ssh(
    docker_engine: Engine, sshd_image: str
) -> None:
    async with cluster() as c:
        out = shared_folder(c)
        await docker_hosts(c, docker_engine, out, *("sa", "sb"))
        job = await c.submit(
            f"image: {sshd_image}\nvolumes: [{out}:/out]\n"
            + peer_job(
                "boxes",
                "/out",
                ["ssh $peer 'cat /workflow/me; echo node $GPUCTL_NODE_RANK path=$PATH' > /out/ssh"],
                every_node=("echo node $GPUCTL_NODE_RANK path=$PATH > /workflow/me",),
            )
        )
        done = await c.wait_for(job.id, "done", "failed", "stopped")
        await all_nodes_ended(c, job.id)
        log = (await c.full_log(job.id)).decode()
        assert done.status == "done", log
        mine, session = (out / "ssh").read_text().splitlines()
    assert mine == f"node 1 path={IMAGE_PATH}"  # node 1's own /workflow: the session ran in its container...
    assert session == mine  # ...with node 1's job environment and the image's PATH (mpirun's orted needs it)
