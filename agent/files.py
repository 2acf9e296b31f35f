"""A job's inputs: its remote `repos` and its `files:`, put in place before the job starts.

The executor loop asks `FilePrep.prepare(desired)` for the allocations that may start now: one with inputs
is held back while a background task builds them in a staging folder `<alloc>/`: it clones the repos into
`work/` (agent/repos.py), fetches the archives (verified against their sha256 ids, cached under
`<state_dir>/files/`), unpacks the `files:` archive over them into `work/` (a file given in both wins), and
checks and rewrites the absolute-path archive as `root-files.tar` (owned by root), for the container runtime
to copy in before the container starts. `Executor._start` then moves the staged parts into place (`work/`
is the job's working directory), or fails the allocation with the reason recorded here.

Unpacking is safe against a hostile archive: `tarfile`'s "data" filter refuses absolute paths, `..`,
links that point outside, devices and set-uid bits, and the whole is bounded in size before a byte lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.client import CoordinatorClient, retryable
from agent.repos import RepoError, clone_repos, git_env
from shared.spec import TaskSpec
from shared.wire import AllocationSpec

log = logging.getLogger("gpuctl.agent")

MAX_UNPACKED_BYTES = 16 * 1024 * 1024 * 1024  # a gzip bomb stops here, before anything is written
FETCH_ATTEMPTS = 3
FETCH_RETRY_S = 1.0
ROOT_FILES = "root-files.tar"  # in the staged folder, then in the allocation's: files at absolute paths
_OUTSIDE = "/gpuctl-root-files"  # checked against as the extraction root: `..` must not climb above it


class FilesError(Exception):
    """Why an allocation's files could not be put in place (one line, starting with `files:`)."""


def unpack(archive: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Unpack a tar.gz into `dest` (created) with tarfile's "data" filter. Raises FilesError; `dest` may
    then hold part of the archive (the caller throws it away)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            total = sum(m.size for m in members if m.isfile())
            if total > max_bytes:
                raise FilesError(f"files: the archive unpacks to {total} bytes, over {max_bytes}")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FilesError(f"files: cannot unpack the archive: {exc}") from None


def root_files_tar(archive: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Rewrite the absolute-path archive (a tar.gz of paths like `root/.ssh/id_rsa`) as a plain tar for the
    engine's `put_archive(path="/")`, each member through tarfile's "data" filter (no `..`, no absolute
    or escaping links, no devices, no set-uid bits; modes kept) and owned by root. Raises FilesError."""
    try:
        dest.touch(mode=0o600)  # it may hold a job's keys (`~/.ssh/id_rsa:/root/.ssh/id_rsa`)
        with tarfile.open(archive, "r:gz") as tar, tarfile.open(dest, "w") as out:
            members = tar.getmembers()
            total = sum(m.size for m in members if m.isfile())
            if total > max_bytes:
                raise FilesError(f"files: the archive unpacks to {total} bytes, over {max_bytes}")
            for member in members:
                kept = tarfile.data_filter(member, _OUTSIDE)
                kept = kept.replace(uid=0, gid=0, uname="root", gname="root", deep=False)
                out.addfile(kept, tar.extractfile(member) if member.isfile() else None)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FilesError(f"files: cannot unpack the absolute-path archive: {exc}") from None


def has_inputs(spec: TaskSpec) -> bool:
    """Whether the job waits for FilePrep before it may start."""
    return bool(spec.files_archive or spec.root_files_archive or spec.repos)


class FilePrep:
    """Fetch and unpack the files of allocations about to start. Not thread-safe: one event loop."""

    def __init__(
        self,
        client: CoordinatorClient,
        state_dir: Path,
        wake: Callable[[], None],
        agent_env: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.agent_env = dict(agent_env or {})  # PATH and the proxy variables, for git
        self.cache = state_dir / "files"
        self.staging = self.cache / "staged"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.cache.chmod(0o700)  # archives and staged trees (a clone's token, a job's files) are the agent's
        self.wake = wake  # called when a fetch ends, so the executor loop looks again at once
        self.tasks: dict[str, asyncio.Task[None]] = {}  # by allocation id
        self.errors: dict[str, str] = {}  # by allocation id: why its files are not there

    def staged(self, alloc_id: str) -> Path:
        return self.staging / alloc_id

    def prepare(self, desired: Sequence[AllocationSpec], started: set[str]) -> list[AllocationSpec]:
        """The desired allocations that may go to the reconciler now: all but those whose files are still
        being fetched. Starts a fetch for each new one with an archive; forgets what is no longer wanted."""
        ready = []
        wanted = {a.id for a in desired}
        for alloc in desired:
            waiting = alloc.id not in started and alloc.desired == "run" and has_inputs(alloc.spec)
            if not waiting or alloc.id in self.errors or self.staged(alloc.id).exists():
                ready.append(alloc)
            elif alloc.id not in self.tasks:
                self.tasks[alloc.id] = asyncio.create_task(
                    self._prepare_one(alloc.id, alloc.spec), name=f"files-{alloc.id}"
                )
        for alloc_id in list(self.tasks):
            if alloc_id not in wanted:
                self.tasks.pop(alloc_id).cancel()
        self.errors = {k: v for k, v in self.errors.items() if k in wanted}
        specs = [a.spec for a in desired if a.id not in started]
        self._prune({s.files_archive for s in specs} | {s.root_files_archive for s in specs}, wanted)
        return ready

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    async def _prepare_one(self, alloc_id: str, spec: TaskSpec) -> None:
        staged = self.staged(alloc_id)
        partial = staged.with_name(staged.name + ".partial")
        try:
            shutil.rmtree(partial, ignore_errors=True)
            (partial / "work").mkdir(parents=True)
            await clone_repos(spec.repos, partial / "work", git_env(self.agent_env, partial))
            if spec.files_archive is not None:
                archive = await self._fetch(spec.files_archive)
                await asyncio.to_thread(unpack, archive, partial / "work")
            if spec.root_files_archive is not None:
                archive = await self._fetch(spec.root_files_archive)
                await asyncio.to_thread(root_files_tar, archive, partial / ROOT_FILES)
            partial.rename(staged)
            log.info("allocation %s: repos and files in place", alloc_id)
        except (FilesError, RepoError) as exc:
            self.errors[alloc_id] = str(exc)
            log.warning("allocation %s: %s", alloc_id, exc)
        except OSError as exc:  # a full disk fails one job
            self.errors[alloc_id] = f"files: cannot stage the job's inputs: {exc}"
            log.warning("allocation %s: %s", alloc_id, self.errors[alloc_id])
        finally:
            self.tasks.pop(alloc_id, None)
            self.wake()

    async def _fetch(self, archive_id: str) -> Path:
        """The archive in the cache, fetched if absent; retries connection trouble a few times."""
        path = self.cache / f"{archive_id}.tar.gz"
        if path.exists():
            return path
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                await self.client.fetch_files(archive_id, path)
                return path
            except Exception as exc:  # any failure fails the allocation, with its reason
                if attempt < FETCH_ATTEMPTS and retryable(exc):
                    await asyncio.sleep(FETCH_RETRY_S * attempt)
                    continue
                raise FilesError(f"files: cannot fetch archive {archive_id[:12]}: {exc}") from None
        raise AssertionError("unreachable")

    def _prune(self, archive_ids: set[str | None], wanted: set[str]) -> None:
        """Drop cached archives and staged folders that no waiting allocation needs any more."""
        for path in self.cache.glob("*.tar.gz"):
            if path.name.removesuffix(".tar.gz") not in archive_ids:
                with contextlib.suppress(OSError):
                    path.unlink()
        for path in self.staging.iterdir():
            alloc_id = path.name.removesuffix(".partial")
            if alloc_id not in wanted and alloc_id not in self.tasks:
                shutil.rmtree(path, ignore_errors=True)
