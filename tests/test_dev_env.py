"""Dev environments and `gpuctl ssh`, end to end: a real coordinator and agent, the job's real sshd (OpenSSH,
as the job's own uid), and the real `ssh` and `scp` clients, whose ProxyCommand is gpuctl itself over the
agent's channel. Also who may, the audit log, `inactivity_duration`, and the spec's errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.job_ssh import SSHD, nss_wrapper, ssh_files, write_ssh_files
from cli.api import ApiError
from cli.config import CliConfig, save_cli_config
from cli.remote import _open
from cli.ssh import alias, ssh_options
from coordinator.dev_envs import Sessions
from coordinator.store import JobRow
from shared.channel import Data, ExecOpen, Open, encode
from shared.spec import SpecError, TaskSpec, parse_task
from shared.states import JobState
from shared.wire import AllocationSpec, AuditEntry, SshHost, UserCreate
from tests.harness import Cluster, cluster
from tests.real_parts import part_missing
from tests.test_channel import _running_sleep, _until
from tests.test_cli import GPUCTL, ROOT

pytestmark = pytest.mark.timeout(180)

DEV = "type: dev-environment\nname: dev\nide: vscode\ninit: ['echo init ran > init-mark']\n"


def need_ssh() -> None:
    """Fail under CI, skip elsewhere, when a real part is missing (scripts/test installs them)."""
    for what, present in (
        ("openssh-server", Path(SSHD).exists()),
        ("openssh-client", shutil.which("ssh") is not None and shutil.which("scp") is not None),
        ("libnss-wrapper", nss_wrapper() is not None),
    ):
        if not present:
            part_missing(f"needs {what}")


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def run(env: dict[str, str], *argv: str) -> Ran:
    """A command (gpuctl, scp) as a user runs it; the coordinator and agent go on serving meanwhile."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def gpuctl(env: dict[str, str], *args: str) -> Ran:
    return await run(env, *GPUCTL, *args)


def cli_env(c: Cluster, token: str, name: str) -> dict[str, str]:
    """The environment of a user's CLI: its own config folder (and so its own ssh key and known_hosts)."""
    config = save_cli_config(
        CliConfig(c.api.config.url, token, c.api.config.ca_file), c.root / f"cli-{name}" / "config.yaml"
    )
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(c.root / f"cli-{name}"),
        "GPUCTL_CONFIG": str(config),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
async def dev_env() -> AsyncIterator[tuple[Cluster, str, dict[str, str]]]:
    need_ssh()
    async with cluster() as c:
        c.start_agent("host-a", "2xH100:80GB")
        job = await c.submit(DEV)
        await c.wait_for(job.id, "running")
        yield c, job.id, cli_env(c, c.api.config.token, "admin")


async def test_ssh_runs_a_command_through_openssh_and_passes_its_exit_code_back(
    dev_env: tuple[Cluster, str, dict[str, str]],
) -> None:
    c, job_id, env = dev_env
    ran = await gpuctl(env, "ssh", job_id, "--", "echo", "hi")
    assert (ran.code, ran.out) == (0, "hi\n"), ran.err
    ran = await gpuctl(env, "ssh", job_id, "--", "cat init-mark; id -un; exit 7")
    assert (ran.code, ran.out) == (7, "init ran\ngpuctl-job\n"), ran.err  # its init ran, in its home

    # the host key was pinned before ssh ever connected: a changed one is refused, never learnt
    known = c.root / "cli-admin" / "ssh" / "known_hosts"
    pinned = known.read_text()
    assert pinned.startswith(f"gpuctl-{job_id} ssh-ed25519 ")
    known.write_text(pinned.replace(pinned.split()[2], "AAAAC3NzaC1lZDI1NTE5AAAAI" + "A" * 43))
    config = c.root / "ssh_config"
    ran = await gpuctl(env, "ssh-config", job_id)
    assert ran.code == 0, ran.err
    assert known.read_text() == pinned  # ssh-config pins it again
    known.write_text(pinned.replace(pinned.split()[2], "AAAAC3NzaC1lZDI1NTE5AAAAI" + "A" * 43))
    config.write_text(ran.out)
    refused = await run(env, "ssh", "-F", str(config), f"gpuctl-{job_id}", "true")
    assert refused.code == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.err, refused.err
    known.write_text(pinned)

    # scp, with the Host block ssh-config printed, as VS Code's Remote-SSH uses it
    local = c.root / "upload.bin"
    local.write_bytes(os.urandom(300_000))
    ran = await run(env, "scp", "-F", str(config), str(local), f"gpuctl-{job_id}:copied.bin")
    assert ran.code == 0, ran.err
    alloc_dir = next(c.root.glob("host-a/allocs/*"))
    assert (alloc_dir / "work" / "copied.bin").read_bytes() == local.read_bytes()

    entries = await ended_sessions(c, job_id)
    sessions = [(e.who, e.kind, e.command, e.exit_code, e.error) for e in entries]
    assert sessions == [("admin", "ssh", [], None, "")] * 4  # refused on its host key: it still happened

    # a person's key is let in for their sessions only: whoever leaves the project leaves no key behind,
    # which a job of theirs on the same host could use on this loopback sshd
    keys = alloc_dir / "work" / ".ssh" / "authorized_keys"
    ran = await gpuctl(env, "ssh", job_id, "--", "cat .ssh/authorized_keys")
    assert len(ran.out.splitlines()) == 2, ran.out  # the job's own and the person's
    await _until(lambda: keys.read_text().splitlines() == ran.out.splitlines()[:1], "the key to go")


async def test_a_local_forward_through_ssh_reaches_a_server_in_the_dev_environment(
    dev_env: tuple[Cluster, str, dict[str, str]],
) -> None:
    """What VS Code's Remote-SSH does: a server started over ssh, reached through ssh's local forward."""
    c, job_id, env = dev_env
    config = c.root / "ssh_config"
    config.write_text((await gpuctl(env, "ssh-config", job_id)).out)
    remote, local = _free_port(), _free_port()
    server = f"echo forwarded > page && exec busybox httpd -f -p 127.0.0.1:{remote} -h ."
    forward = f"-L127.0.0.1:{local}:127.0.0.1:{remote}"
    ssh = await asyncio.create_subprocess_exec(
        "ssh", "-F", str(config), "-oExitOnForwardFailure=yes", forward, f"gpuctl-{job_id}", server, env=env
    )
    try:
        assert await _get_until_served(local) == b"forwarded\n"
    finally:
        ssh.terminate()
        await ssh.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get_until_served(port: int) -> bytes:
    """GET /page through the forward, again until ssh listens and the server answers."""
    async with asyncio.timeout(60):
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:  # ssh does not listen yet
                await asyncio.sleep(0.2)
                continue
            writer.write(b"GET /page HTTP/1.0\r\n\r\n")
            try:
                answer = await reader.read()
            except ConnectionResetError:  # ssh's forward found no server listening yet
                answer = b""
            writer.close()
            if answer:
                return answer.split(b"\r\n\r\n", 1)[1]
            await asyncio.sleep(0.2)


async def ended_sessions(c: Cluster, job_id: str) -> list[AuditEntry]:
    """The job's audit entries once each has ended (the coordinator records an end after its client left)."""
    async with asyncio.timeout(30):
        while True:
            entries = await asyncio.to_thread(c.api.audit, job_id)
            if all(e.ended_at is not None for e in entries):
                return entries
            await asyncio.sleep(0.1)


async def test_a_member_of_another_project_is_refused_before_ssh_runs(
    dev_env: tuple[Cluster, str, dict[str, str]],
) -> None:
    c, job_id, _ = dev_env
    await asyncio.to_thread(c.api.create_project, "other")
    created = await asyncio.to_thread(c.api.create_user, UserCreate(name="eve", project="other"))
    eve = cli_env(c, created.token, "eve")
    ran = await gpuctl(eve, "ssh", job_id, "--", "echo", "hi")
    assert ran.code != 0 and ran.out == ""
    assert "only members of the job's project, and admins, may reach into it" in ran.err
    assert not (c.root / "cli-eve" / "ssh").exists()  # refused before any key or ssh

    # the proxy itself, as a Host block copied from someone else would run it: refused at the channel
    ran = await gpuctl(eve, "ssh-proxy", job_id)
    assert ran.code == 255
    assert "only members of the job's project, and admins, may reach into it" in ran.err
    assert await asyncio.to_thread(c.api.audit, job_id) == []


async def test_a_task_has_no_ssh_and_a_bad_key_is_refused(
    dev_env: tuple[Cluster, str, dict[str, str]],
) -> None:
    c, job_id, _ = dev_env
    task = await c.submit("name: plain\ncommands: ['sleep 600']")
    await c.wait_for(task.id, "running")
    with pytest.raises(ApiError, match=r"job: .* is no dev environment \(type: dev-environment\)"):
        await asyncio.to_thread(c.api.ssh_host, task.id)
    from cli.remote import carry

    said: list[str] = []
    reader = asyncio.StreamReader()
    reader.feed_eof()
    writer = _NullWriter()
    path = f"/jobs/{job_id}/ssh?key=ssh-rsa%20AAAA"
    assert not await carry(c.api.config, path, "ssh", reader, writer, said.append)  # type: ignore[arg-type]
    assert said == ["ssh: key: expected an ssh-ed25519 public key, as `gpuctl ssh` makes"]


def _job_row(spec: TaskSpec, started_at: float) -> JobRow:
    return JobRow(1, "j-1", "dev", spec, 0, JobState.RUNNING, "", None, False, 0.0, started_at, None)


class _NullWriter:
    def close(self) -> None:
        pass


async def test_an_idle_dev_environment_stops_after_its_inactivity_duration_not_during_a_session() -> None:
    need_ssh()
    async with cluster() as c:
        c.start_agent("host-a", "2xH100:80GB")
        job = await c.submit(DEV + "inactivity_duration: 6s\n")
        await c.wait_for(job.id, "running")
        env = cli_env(c, c.api.config.token, "admin")
        ran = await gpuctl(env, "ssh", job.id, "--", "sleep 10; echo still here")
        assert (ran.code, ran.out) == (0, "still here\n"), ran.err  # a session longer than the duration
        assert (await c.job(job.id)).status == "running"
        stopped = await c.wait_for(job.id, "stopped", "failed", "done", timeout_s=60)
        assert (stopped.status, stopped.reason) == ("stopped", "no ssh session for 6s (inactivity_duration)")

        never = await c.submit(DEV.replace("name: dev", "name: never") + "inactivity_duration: 2s\n")
        assert (await c.wait_for(never.id, "stopped", "failed", "done", timeout_s=60)).status == "stopped"


def test_idle_counts_from_the_latest_of_start_last_session_and_coordinator_start() -> None:
    spec = parse_task(DEV + "inactivity_duration: 60s\n").spec
    job = _job_row(spec, started_at=1000.0)
    sessions = Sessions(now=500.0)
    assert not sessions.idle(job, 1059.0) and sessions.idle(job, 1060.0)
    sessions.opened(job.id)
    assert not sessions.idle(job, 5000.0)  # a session open: never idle
    sessions.closed(job.id, now=5000.0)
    assert not sessions.idle(job, 5059.0) and sessions.idle(job, 5060.0)
    assert not Sessions(now=9000.0).idle(job, 9059.0)  # a restarted coordinator gives a full duration
    off = _job_row(parse_task(DEV).spec, started_at=1000.0)
    assert not sessions.idle(off, 10**9)  # inactivity_duration: off by default


def test_a_dev_environments_sshd_listens_on_loopback_only_with_forwards_and_sftp(tmp_path: Path) -> None:
    """Read back by OpenSSH's own sshd (-T: its effective configuration)."""
    need_ssh()
    alloc = AllocationSpec(
        id="a-1",
        job_id="j",
        job_name="dev",
        desired="run",
        spec=parse_task(DEV).spec,
        blocks=(0,),
        gpus=(),
        cpus=(0,),
        memory_mib=1024,
        ssh_port=10023,
        ssh_seed="11" * 32,
    )
    files = ssh_files(alloc, str(tmp_path), in_container=False)
    assert files["config"][0] == ""  # no peers to reach
    write_ssh_files(files, tmp_path)
    config = tmp_path / ".ssh" / "sshd_config"
    out = subprocess.run([SSHD, "-T", "-f", str(config)], capture_output=True, text=True, check=True).stdout
    settings = set(out.splitlines())
    expected = {"listenaddress 127.0.0.1:10023", "allowtcpforwarding local", "subsystem sftp internal-sftp"}
    assert expected <= settings, out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ide: pycharm\n", "t.yaml:2: ide: only vscode (or no ide: ssh only) is supported, got 'pycharm'"),
        ("commands: [x]\n", "t.yaml:2: commands: a dev-environment runs init, then stays up; put these"),
        ("inactivity_duration: soon\n", "t.yaml:2: inactivity_duration: expected a duration"),
        ("inactivity_duration: 0s\n", "t.yaml:2: inactivity_duration: must be between 1s and 10 years"),
        ("init: [{a: b}]\n", "t.yaml:2: init[0]: expected a string"),
        ("nodes: 2\n", "t.yaml:1: nodes: a dev-environment runs on one node, got 2"),
    ],
)
def test_dev_environment_spec_errors_name_the_field(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_task("type: dev-environment\n" + text, source="t.yaml")
    assert str(error.value).startswith(expected), str(error.value)


def test_a_dev_environment_parses_as_dstack_writes_it() -> None:
    task = parse_task(DEV + "version: 1.90.0\ninactivity_duration: 2h\nimage: debian:12\n", source="t.yaml")
    assert (task.spec.type, task.spec.ide, task.spec.commands) == (
        "dev-environment",
        "vscode",
        ("echo init ran > init-mark",),
    )
    assert task.spec.inactivity_duration_s == 7200
    assert task.warnings == ("ignored: version (VS Code's Remote-SSH installs its own server over ssh)",)
    assert parse_task("type: dev-environment\ninactivity_duration: off\n").spec.inactivity_duration_s is None
    with pytest.raises(
        SpecError, match="inactivity_duration: unknown field; .* is for type: dev-environment"
    ):
        parse_task("commands: [x]\ninactivity_duration: 1h\n")


def test_ssh_reads_the_clis_paths_whole_in_both_forms(tmp_path: Path) -> None:
    """The CLI's folder may hold a space or a percent sign (a home folder's name): ssh reads each path whole,
    from `gpuctl ssh`'s -o options and from `gpuctl ssh-config`'s Host block alike."""
    folder = tmp_path / "my files 100%" / "ssh"
    host = SshHost(job_id="0123abcd", user="root", host_key="ssh-ed25519 AAAA")
    options = ssh_options(host, folder)
    block = tmp_path / "config"
    block.write_text(f"Host {alias(host)}\n" + "".join(f"    {k} {v}\n" for k, v in options.items()))
    for argv in (
        ["ssh", "-G", *(f"-o{k}={v}" for k, v in options.items()), alias(host)],
        ["ssh", "-G", "-F", str(block), alias(host)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        read = dict(line.split(" ", 1) for line in done.stdout.splitlines())
        assert read["userknownhostsfile"] == str(folder / "known_hosts")
        assert read["identityfile"] == str(folder / "id_ed25519").replace("%", "%%")  # shown unexpanded


async def test_an_exec_whose_caller_vanishes_is_killed_and_audited_with_its_end(
    dev_env: tuple[Cluster, str, dict[str, str]],
) -> None:
    """A caller gone without a word (a killed CLI, a laptop put to sleep) cancels the coordinator's handler:
    the command is killed on its host, and the exec's audit entry still gets its end."""
    c, job_id, _ = dev_env
    ws = await _open(c.api.config, f"/jobs/{job_id}/exec")
    marker = f"600.{int.from_bytes(os.urandom(3))}"  # this test's command, in the process list
    command = ("sh", "-c", f"echo up; exec sleep {marker}")
    await ws.send(encode(Open(1, ExecOpen("-", command, False, 24, 80))))
    assert await ws.receive() == encode(Data(1, b"up\n", fd=1))  # it runs, and is audited as started
    ws.writer.transport.abort()
    await _until(lambda: not _running_sleep(marker), "the command to be killed")
    [entry] = await ended_sessions(c, job_id)
    assert (entry.command, entry.exit_code, entry.error) == (
        [*command],
        None,
        "cut: the user's connection was lost, or the coordinator stopped",
    )
