"""The Docker runtime: each allocation of a job with an `image` runs in one container, through the Docker
Engine API at a configurable socket, with exactly the devices and the share of the host its blocks hold.

Calls from the agent's loop (start, observe, signal_stop, release) return at once: pulling, creating,
following output and signalling happen in threads (one per container, see container_run), so a slow pull
or a slow engine never stalls the agent. A restarted agent re-adopts its containers: `observe` on an
allocation with no thread yet starts one, which finds the container by name and re-attaches to its log
from the spool's cursor.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import msgspec

from agent.config import DockerConfig
from agent.job_ssh import container_ssh_files, wants_ssh, write_ssh_files
from agent.runtime.base import Observed, RuntimeStartError
from agent.runtime.commands import shell_path
from agent.runtime.container import LABEL_ALLOC, LABEL_HOST, WORK_DIR, container_env, container_name
from agent.runtime.container_run import ContainerRun, Host, read_exit
from agent.runtime.devices import DeviceError, gpu_grant
from agent.runtime.engine import ENGINE_ERRORS, reason
from agent.runtime.image import Registry
from agent.runtime.image_folder import ImageFolder
from shared.files import write_atomic
from shared.spec import TaskSpec
from shared.states import AllocState
from shared.volumes import first_volume_refusal, parse_volume, under_prefix
from shared.wire import AllocationSpec, Inventory

log = logging.getLogger("gpuctl.agent")

JOIN_TIMEOUT_S = 2.0


def registry_of(config: DockerConfig) -> Registry:
    """Where this host's engine pulls from, with the agent's credentials. Pure."""
    return Registry(config.pull_mirror(), config.registry_username, config.registry_password)


class DockerRuntime:
    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        inventory: Inventory,
        config: DockerConfig,
        host: str,
        state_dir: Path,
    ) -> None:
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docker-signal")
        self.images = ImageFolder(
            config.socket, config.image_dir or state_dir / "images", state_dir / "images-loaded.json"
        )
        self.host = Host(
            client=client,
            inventory=inventory,
            name=host,
            registry=registry_of(config),
            pids_limit=config.pids_limit,
            closing=threading.Event(),
            signal_async=self._submit,
            load_archives=self.images.load_new,
        )
        self._runs: dict[str, ContainerRun] = {}
        self._lock = threading.Lock()
        self._submit(self.images.load_new)  # at start-up, off the agent's loop

    # --- the Runtime interface -----------------------------------------------------------------------

    def start(self, alloc: AllocationSpec, env: dict[str, str], alloc_dir: Path, log_file: Path) -> None:
        """Check what this host allows, then pull, create and start in the background (state `pulling`,
        then `running`). Raises RuntimeStartError with a one-line reason for a job this host refuses."""
        if not alloc.spec.image:
            raise RuntimeStartError("the Docker runtime needs an image")
        refusal = container_refusal(alloc.spec, self.config)
        if refusal:
            raise RuntimeStartError(refusal)
        shell_path(alloc.spec.shell)  # an unknown shell fails here, with its reason, not in the thread
        try:
            grant = gpu_grant(alloc, self.host.inventory)
        except (DeviceError, OSError) as exc:
            raise RuntimeStartError(f"cannot give the job its GPUs: {exc}") from None
        if wants_ssh(alloc):  # the image's sshd and ssh read them in /workflow/.ssh
            inside = container_env(env, alloc, grant)
            write_ssh_files(container_ssh_files(alloc, WORK_DIR, inside), alloc_dir / "work")
        launch = msgspec.json.encode({"image": alloc.spec.image, "env": env})
        write_atomic(alloc_dir / "launch.json", launch, mode=0o600)  # the env may hold secrets
        self._run_for(alloc, alloc_dir)

    def observe(self, alloc_dir: Path) -> Observed:
        """From files and memory only (no engine call). For an allocation an earlier agent process started,
        this re-adopts it: a thread finds its container and copies its output from the spool's cursor."""
        ended = read_exit(alloc_dir)
        if ended is not None:
            return ended
        run = self._runs.get(alloc_dir.name)
        if run is None:
            try:
                spec = msgspec.json.decode((alloc_dir / "alloc.json").read_bytes(), type=AllocationSpec)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                return Observed(AllocState.FAILED, None, "its journal (alloc.json) is unreadable")
            if not (alloc_dir / "launch.json").exists():
                return Observed(
                    AllocState.FAILED, None, "the agent stopped before the job's container was made"
                )
            run = self._run_for(spec, alloc_dir)
        return run.observed

    def signal_stop(self, alloc_dir: Path, kill: bool) -> None:
        run = self._runs.get(alloc_dir.name)
        if run is not None:
            run.signal(kill)

    def release(self, alloc_dir: Path) -> None:
        """Remove the allocation's container (its end and its log are recorded). Idempotent."""
        run = self._runs.pop(alloc_dir.name, None)
        if run is not None:
            run.close()
        self._submit(lambda: self._remove(container_name(alloc_dir.name)))

    def sweep(self, known_alloc_ids: Collection[str]) -> None:
        """Remove this host's containers whose allocation the agent has no record of (its state folder was
        lost, or the container outlived its journal). Blocking; call at start-up."""
        try:  # the plain listing: the SDK's list() inspects each one and races with removals
            listed = self.host.client.api.containers(
                all=True, filters={"label": f"{LABEL_HOST}={self.host.name}"}
            )
        except ENGINE_ERRORS as exc:
            log.warning("cannot list this host's containers: %s", reason(exc))
            return
        for entry in listed:
            alloc_id = (entry.get("Labels") or {}).get(LABEL_ALLOC, "")
            if alloc_id not in known_alloc_ids:
                log.info("removing container %s of unknown allocation %r", entry["Id"][:12], alloc_id)
                _logged(functools.partial(self._remove, entry["Id"]))

    def set_inventory(self, inventory: Inventory) -> None:
        """New containers get their GPUs by the devices as they are now; existing ones keep theirs."""
        self.host = dataclasses.replace(self.host, inventory=inventory)

    def close(self) -> None:
        """The agent is stopping: stop following output; containers keep running for the next agent."""
        self.host.closing.set()
        runs = list(self._runs.values())
        for run in runs:
            run.close()
        deadline = time.monotonic() + JOIN_TIMEOUT_S  # a thread in a pull may not wake: do not wait on each
        for run in runs:
            run.thread.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.host.client.close()

    # --- internals ---------------------------------------------------------------------------------------

    def _run_for(self, alloc: AllocationSpec, alloc_dir: Path) -> ContainerRun:
        with self._lock:
            run = self._runs.get(alloc.id)
            if run is None:
                run = self._runs[alloc.id] = ContainerRun(self.host, alloc, alloc_dir)
                run.start()
        return run

    def _submit(self, call: Callable[[], object]) -> None:
        if not self.host.closing.is_set():
            self._pool.submit(_logged, call)

    def _remove(self, name_or_id: str) -> None:
        try:
            self.host.client.api.remove_container(name_or_id, force=True)
        except docker.errors.NotFound:
            pass


def container_refusal(spec: TaskSpec, config: DockerConfig) -> str | None:
    """Why this host will not run the job's container, or None. The scheduler checked the same before
    placing it; the host also resolves symlinks, which only it can see."""
    if spec.privileged and not config.allow_privileged:
        return "this host does not allow privileged containers (agent config docker.allow_privileged)"
    refusal = first_volume_refusal(spec.volumes, config.volume_prefixes)
    if refusal:
        return refusal
    for text in spec.volumes:
        real = os.path.realpath(parse_volume(text).host_path)
        if not under_prefix(real, config.volume_prefixes):
            return f"cannot mount {text}: it leads to {real}, which is not under an allowed prefix"
    return None


def _logged(call: Callable[[], object]) -> None:
    try:
        call()
    except ENGINE_ERRORS as exc:
        log.warning("Docker: %s", reason(exc))
