"""Remote `repos`: the agent clones them with the real git before the job starts (a branch shallowly, a hash
fully then checked out), owned by the job's user; a failed clone fails the job with git's reason. The upstream
repository is served over git's smart HTTP, as a forge would serve it; git refuses local transports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.repos import RepoError, clone_repo, git_env, redact_url
from shared.spec import Repo, TaskSpec
from tests.git_http import git_http_server
from tests.harness import cluster, reachable_tmpdir

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Path, str]]:
    """A repository with two commits on main and one on a branch `dev`; answers it and main's first commit."""
    root = reachable_tmpdir()
    repo = root / "upstream"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "version.txt").write_text("one\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "version.txt").write_text("two\n")
    git(repo, "commit", "-qam", "two")
    git(repo, "checkout", "-qb", "dev")
    (repo / "version.txt").write_text("dev\n")
    git(repo, "commit", "-qam", "dev")
    git(repo, "checkout", "-q", "main")
    yield repo, first
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def served(upstream: tuple[Path, str]) -> Iterator[tuple[str, str]]:
    """The upstream repository over HTTP on 127.0.0.1; answers its URL and main's first commit."""
    repo, first = upstream
    with git_http_server(repo.parent) as base:
        yield f"{base}/{repo.name}", first


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent hands its own proxy variables to git: a proxy of the test's environment must not carry the
    clones from the local server."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1")


async def test_repos_are_cloned_into_the_working_directory_before_the_commands(
    served: tuple[str, str],
) -> None:
    url, first = served
    spec = TaskSpec(
        commands=(
            "cat version.txt lib/version.txt deps/old/version.txt",
            "git -C lib rev-list --count HEAD",  # shallow: one commit
            "git -C deps/old rev-parse HEAD",
            "stat -c %u version.txt deps/old/version.txt",
            "id -u",
        ),
        repos=(Repo(url), Repo(url, branch="dev", path="lib"), Repo(url, hash=first, path="deps/old")),
    )
    async with cluster() as c:
        c.start_agent("repo-a")
        job = await c.submit_spec(spec)
        log = (await c.full_log(job.id)).decode()
        assert (await c.job(job.id)).status == "done", log
    *words, uid = log.split()
    assert words == ["two", "dev", "one", "1", first, uid, uid]  # the clone is the job's own


async def test_a_failed_clone_fails_the_job_with_gits_reason(served: tuple[str, str]) -> None:
    url, _ = served
    async with cluster() as c:
        c.start_agent("repo-b")
        missing = await c.submit_spec(TaskSpec(commands=("true",), repos=(Repo(f"{url}.nowhere"),)))
        failed = await c.wait_for(missing.id, "failed")
        assert failed.reason == (
            f"repos: git clone {url}.nowhere failed: fatal: repository '{url}.nowhere/' not found"
        )
        bad_branch = TaskSpec(commands=("true",), repos=(Repo(url, branch="nope"),))
        failed = await c.wait_for((await c.submit_spec(bad_branch)).id, "failed")
        assert failed.reason == (
            f"repos: git clone {url} failed: fatal: Remote branch nope not found in upstream origin"
        )
        bad_hash = TaskSpec(commands=("true",), repos=(Repo(url, hash="0" * 40),))
        failed = await c.wait_for((await c.submit_spec(bad_hash)).id, "failed")
        assert failed.reason.startswith(f"repos: git checkout {'0' * 40} of {url} failed: "), failed.reason
        assert "\n" not in failed.reason


async def test_git_refuses_local_transports_even_past_the_spec(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    """The agent's git runs as root: a `file://` URL would hand the job any repository on the host."""
    repo, _ = upstream
    env = git_env({"PATH": os.environ["PATH"]}, tmp_path)
    for url in (f"file://{repo}", str(repo)):
        with pytest.raises(RepoError) as refused:
            await clone_repo(Repo(url), tmp_path, env, timeout_s=30)
        assert str(refused.value) == f"repos: git clone {url} failed: fatal: transport 'file' not allowed"
    assert not (tmp_path / "upstream").exists()


@contextmanager
def silent_proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP listener that records what it is sent and never answers: a proxy that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            seen.append(conn.recv(4096))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    finally:
        server.close()
        for conn in held:
            conn.close()


async def test_git_goes_through_the_agents_proxy_and_gives_up_after_its_time_limit(tmp_path: Path) -> None:
    with silent_proxy() as (proxy, seen):
        env = git_env({"PATH": os.environ["PATH"], "https_proxy": proxy, "http_proxy": proxy}, tmp_path)
        with pytest.raises(
            Exception,
            match=r"^repos: git clone https://\*\*\*@git\.example\.invalid/r\.git failed: no answer in 2 s$",
        ):
            await asyncio.wait_for(
                clone_repo(Repo("https://user:tok3n@git.example.invalid/r.git"), tmp_path, env, timeout_s=2),
                30,
            )
    assert seen and seen[0].startswith(b"CONNECT git.example.invalid:443 "), seen


def test_credentials_never_show_in_a_reason() -> None:
    assert redact_url("https://user:tok3n@host:8443/r.git") == "https://***@host:8443/r.git"
    assert redact_url("https://tok3n@host/r.git") == "https://***@host/r.git"
    assert redact_url("git@host:team/r.git") == "git@host:team/r.git"
    assert redact_url("file:///srv/r.git") == "file:///srv/r.git"


def test_ssh_repos_get_none_of_the_hosts_keys_or_config(tmp_path: Path) -> None:
    """git runs ssh as root, whose home comes from passwd, not $HOME: the command git is given must itself
    keep root's keys, agent and config away. Checked with OpenSSH's own reading of it (`ssh -G`)."""
    ssh = git_env({"PATH": os.environ["PATH"]}, tmp_path)["GIT_SSH_COMMAND"]
    effective = subprocess.run(
        f"{ssh} -G git.example.invalid", shell=True, capture_output=True, text=True, check=True, timeout=10
    ).stdout.splitlines()
    assert [line for line in effective if line.startswith("identityfile ")] == ["identityfile none"]
    assert "identityagent none" in effective and "stricthostkeychecking true" in effective
    assert "userknownhostsfile /dev/null" in effective
