"""A job's remote `repos`: cloned with git into its working directory before the commands start, in the same
phase as its `files:` (see agent/files.py), so a failed clone fails the allocation with git's own words.

git never prompts (no terminal, no askpass, ssh in batch mode) and reads no configuration of the agent's
user (HOME is the staging folder, no global or system config), so it never uses the host's credentials:
a private repository needs them in its URL. It goes through the proxy of the agent's environment
(`https_proxy`, `http_proxy`, `no_proxy`), and each step has a time limit.

git runs as the agent's user (root), so it speaks only the network transports: a `file://` URL, a local
path, or a redirect or submodule pointing at one would hand the job any repository on the host. The spec
refuses such URLs too; git's own allow-list also covers what the spec cannot see.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import re
import signal
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.env import DEFAULT_PATH
from shared.spec import Repo

# ssh takes its home from passwd, not $HOME: without these it would offer root's own keys and config to any
# server a job names. A job's ssh:// repo gets no key of the host's, and the host's known keys only.
SSH_COMMAND = (
    "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=none -o IdentityAgent=none"
    " -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/dev/null"
    " -o GlobalKnownHostsFile=/etc/ssh/ssh_known_hosts"
)
CLONE_TIMEOUT_S = 1800.0  # per git command: a large repository over a slow proxy still fits
ALLOWED_PROTOCOLS = "http:https:ssh"  # git's names; never `file` (see the module docstring)
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
_HASH_RE = re.compile(r"[0-9a-fA-F]{4,64}")


class RepoError(Exception):
    """Why a repository is not in place (one line, starting with `repos:`)."""


def git_env(agent_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """git's whole environment: no prompt, no config of the agent's user, network transports only, the
    agent's proxy."""
    env = {
        "PATH": agent_env.get("PATH", DEFAULT_PATH),
        "HOME": str(home),
        "LANG": "C",  # git's messages become the job's reason: one language
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": SSH_COMMAND,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,  # also binds redirects and submodules
    }
    for name in PROXY_VARS:
        for variant in (name, name.upper()):
            if agent_env.get(variant):
                env[variant] = agent_env[variant]
    return env


async def clone_repos(
    repos: Sequence[Repo], work_dir: Path, env: Mapping[str, str], timeout_s: float = CLONE_TIMEOUT_S
) -> None:
    """Clone each repository into `work_dir/<path>`, in order. Raises RepoError; `work_dir` may then hold
    part of them (the caller throws it away)."""
    for repo in repos:
        await clone_repo(repo, work_dir, env, timeout_s)


async def clone_repo(repo: Repo, work_dir: Path, env: Mapping[str, str], timeout_s: float) -> None:
    """`git clone --depth 1 [--branch B]`, or, with a hash, a full clone and `git checkout HASH`."""
    shown = redact_url(repo.url)
    dest = _dest(work_dir, repo.path)
    branch = ["--branch", repo.branch] if repo.branch else []
    if repo.hash is not None and not _HASH_RE.fullmatch(repo.hash):
        raise RepoError(f"repos: {shown}: hash {repo.hash!r} is not a commit id (4 to 64 hex digits)")
    depth = [] if repo.hash else ["--depth", "1"]
    clone = ["clone", "--quiet", "--no-checkout" if repo.hash else "--single-branch", *depth, *branch]
    failure = await _git([*clone, "--", repo.url, str(dest)], work_dir, env, timeout_s)
    if failure is not None:
        raise RepoError(f"repos: git clone {shown} failed: {failure}")
    if repo.hash is not None:
        checkout = ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", repo.hash]
        failure = await _git(checkout, dest, env, timeout_s)
        if failure is not None:
            raise RepoError(f"repos: git checkout {repo.hash} of {shown} failed: {failure}")


def redact_url(url: str) -> str:
    """The URL without its credentials (`https://user:token@host/r` → `https://***@host/r`): it is shown."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password and not (parts.username and parts.scheme in ("http", "https")):
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{netloc}"))


def _dest(work_dir: Path, path: str) -> Path:
    """`path` under the working directory; one that leaves it is refused."""
    normal = posixpath.normpath(path)
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise RepoError(f"repos: path {path!r} leaves the working directory")
    return work_dir / normal


async def _git(args: list[str], cwd: Path, env: Mapping[str, str], timeout_s: float) -> str | None:
    """Run git; None when it succeeded, else the line of its stderr that says why."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # git runs helpers (git-remote-https): a kill must reach them too
        )
    except FileNotFoundError:
        raise RepoError("repos: this host has no git; install it or drop repos") from None
    try:
        async with asyncio.timeout(timeout_s):
            _, stderr = await proc.communicate()
    except TimeoutError:
        return f"no answer in {timeout_s:g} s"
    finally:
        if proc.returncode is None:  # timed out, or the allocation is no longer wanted
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode == 0:
        return None
    return _why(stderr.decode(errors="replace")) or f"git exited with {proc.returncode}"


def _why(stderr: str) -> str:
    """git's last `fatal:`/`error:` line (advice follows it), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (errors or lines or [""])[-1]
