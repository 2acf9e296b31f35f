"""One allocation's container, driven by one thread: find or create it (pulling the image first), start it,
copy its output to the spool until it ends, and record how it ended in `exit.json`.

The same thread body serves a fresh start and a re-adoption after an agent restart: the container is
found by its deterministic name, so it is created at most once and started at most once (a container in
state `created` never ran). Files in the allocation's folder:
`launch.json` (the environment to create it with), `container.json` (it was created: if it is gone now,
someone removed it), `log.cursor` (see container_logs), `exit.json` (the end, final).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import msgspec
from docker.models.containers import Container

from agent.files import ROOT_FILES
from agent.machine import on_this_machine, this_machine
from agent.runtime.base import Observed
from agent.runtime.container import container_name, create_kwargs
from agent.runtime.container_logs import NS_PER_S, LogCursor, copy_messages, parse_timestamp_ns
from agent.runtime.devices import DeviceError, gpu_grant
from agent.runtime.engine import ENGINE_ERRORS, reason
from agent.runtime.image import ImageError, PullCancelled, Registry, ensure_image
from shared.states import AllocState
from shared.wire import AllocationSpec, Inventory

log = logging.getLogger("gpuctl.agent")

PULL_REPORT_INTERVAL_S = 1.0  # progress changes reach the coordinator at most this often
RECONNECT_S = 1.0
KILL_REPEAT_S = 1.0
ALIVE = ("created", "running", "paused", "restarting")


@dataclass(frozen=True)
class Host:
    """What every container run on this host shares."""

    client: docker.DockerClient
    inventory: Inventory
    name: str  # the agent's host name, a label on its containers
    registry: Registry
    pids_limit: int
    closing: threading.Event
    signal_async: Callable[[Callable[[], None]], None]  # runs a short engine call off the event loop
    load_archives: Callable[[], list[str]]  # loads new image archives from the drop folder


class RootFilesError(Exception):
    """The engine refused the job's files at absolute paths (one line, starting with `files:`)."""


def read_exit(alloc_dir: Path) -> Observed | None:
    try:
        record = json.loads((alloc_dir / "exit.json").read_text())
    except FileNotFoundError:
        return None
    return Observed(AllocState(record["state"]), record["exit_code"], record["reason"], record["finished_at"])


def exit_of(state: dict[str, Any]) -> Observed:
    """How a container ended, from its inspect data's State. Pure."""
    code = int(state.get("ExitCode", -1))
    finished = _finished_at(state.get("FinishedAt", ""))
    if state.get("OOMKilled") and code != 0:
        return Observed(AllocState.FAILED, code, "out of memory", finished)
    return Observed(AllocState.EXITED, code, "", finished)


class ContainerRun:
    def __init__(self, host: Host, alloc: AllocationSpec, alloc_dir: Path) -> None:
        self.host = host
        self.alloc = alloc
        self.dir = alloc_dir
        created = (alloc_dir / "container.json").exists()
        self.observed = Observed(AllocState.RUNNING if created else AllocState.STARTING)
        self.stop_requested = False
        self._container: Container | None = None
        self._stream: Any = None
        self._signalled: dict[bool, float] = {}  # kill? -> when that signal was last sent
        self._reported_at = 0.0
        self.thread = threading.Thread(target=self._run, name=f"container-{alloc.id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # --- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            container = self._find()
            if container is None and (self.dir / "container.json").exists():
                return self._record(
                    Observed(AllocState.FAILED, None, "its container was removed outside gpuctl")
                )
            container = container or self._create()
            if container.status == "created":
                if self.stop_requested:
                    return self._record(Observed(AllocState.STOPPED, None, "stopped before it started"))
                self._put_root_files(container)
                container.start()
            self._container = container
            self.observed = Observed(AllocState.RUNNING)
            if self.stop_requested:  # asked while it was being created: the agent's grace clock runs already
                self.signal(kill=False)
            self._follow(container)
        except PullCancelled:
            if not self.host.closing.is_set():  # an agent that stops leaves the pull to the next one
                self._record(Observed(AllocState.STOPPED, None, "stopped while its image was pulled"))
        except (ImageError, DeviceError, RootFilesError) as exc:
            self._record(Observed(AllocState.FAILED, None, str(exc)))
        except ENGINE_ERRORS as exc:
            if not self.host.closing.is_set():
                self._record(Observed(AllocState.FAILED, None, f"Docker: {reason(exc)}"))
        except Exception as exc:  # a bug must still end the allocation with a reason, not hang it
            if self.host.closing.is_set():
                return
            log.exception("allocation %s: container run failed", self.alloc.id)
            self._record(Observed(AllocState.FAILED, None, f"agent error: {reason(exc)}"))

    def _find(self) -> Container | None:
        try:
            return self.host.client.containers.get(container_name(self.alloc.id))
        except docker.errors.NotFound:
            return None

    def _create(self) -> Container:
        launch = json.loads((self.dir / "launch.json").read_text())
        image = ensure_image(
            self.host.client,
            launch["image"],
            self.host.registry.for_job(self.alloc.spec.registry_auth),
            self._report_pull,
            self._cancelled,
            self.host.load_archives,
        )
        if self._cancelled():
            raise PullCancelled()
        grant = gpu_grant(self.alloc, self.host.inventory)
        work_dir = self.dir / "work"
        work_dir.mkdir(exist_ok=True)
        on_machine = on_this_machine(self.alloc, this_machine())  # a simulated host's cores are shared
        kwargs = create_kwargs(
            on_machine, launch["env"], grant, image, self.host.name, work_dir, self.host.pids_limit
        )
        container = self.host.client.containers.create(**kwargs)
        _write_json(self.dir / "container.json", {"id": container.id})
        log.info("allocation %s: container %s created from %s", self.alloc.id, container.short_id, image)
        return container

    def _put_root_files(self, container: Container) -> None:
        """Copy the job's files at absolute paths into the created container (see agent.files). Before every
        start of a container that never ran, so again after an agent restart: the same bytes, idempotent."""
        path = self.dir / ROOT_FILES
        if not path.exists():
            return
        try:
            with path.open("rb") as data:
                container.put_archive("/", data)
        except docker.errors.APIError as exc:
            raise RootFilesError(
                f"files: cannot copy the files at absolute paths in: {reason(exc)}"
            ) from None

    def _follow(self, container: Container) -> None:
        """Copy output until the container has ended and every line is in the spool; then record the end."""
        while not self.host.closing.is_set():
            try:
                self._copy(container, follow=True)
                container.reload()
                if container.status not in ALIVE:
                    self._copy(container, follow=False)  # whatever a follow that ended early missed
                    return self._record(exit_of(container.attrs["State"]))
            except docker.errors.NotFound:
                return self._record(
                    Observed(AllocState.FAILED, None, "its container was removed outside gpuctl")
                )
            except ENGINE_ERRORS as exc:
                if self.host.closing.is_set():
                    return
                log.warning(
                    "allocation %s: following its output failed (%s); retrying", self.alloc.id, reason(exc)
                )
            self.host.closing.wait(RECONNECT_S)

    def _copy(self, container: Container, follow: bool) -> None:
        since = LogCursor.load(self.dir / "log.cursor").since_s()
        stream = container.logs(
            stream=True, follow=follow, timestamps=True, **({"since": since} if since else {})
        )
        self._stream = stream
        try:
            copy_messages(stream, self.dir / "output.log", self.dir / "log.cursor")
        finally:
            self._stream = None
            stream.close()

    def _record(self, observed: Observed) -> None:
        if observed.finished_at is None:
            observed = Observed(observed.state, observed.exit_code, observed.reason, time.time())
        _write_json(
            self.dir / "exit.json",
            {
                "state": observed.state.value,
                "exit_code": observed.exit_code,
                "reason": observed.reason,
                "finished_at": observed.finished_at,
            },
        )
        self.observed = observed

    def _report_pull(self, text: str) -> None:
        now = time.monotonic()
        if self.observed.state is AllocState.PULLING and now - self._reported_at < PULL_REPORT_INTERVAL_S:
            return
        self._reported_at = now
        self.observed = Observed(AllocState.PULLING, None, text)

    def _cancelled(self) -> bool:
        return self.stop_requested or self.host.closing.is_set()

    # --- from the agent's loop ----------------------------------------------------------------------

    def signal(self, kill: bool) -> None:
        """SIGTERM (or SIGKILL) to the container, off the event loop; before it exists, it is never
        started. Idempotent; a repeated SIGKILL goes out at most once a second."""
        self.stop_requested = True
        container, now = self._container, time.monotonic()
        last = self._signalled.get(kill)
        if container is None or (last is not None and (not kill or now - last < KILL_REPEAT_S)):
            return
        self._signalled[kill] = now
        name = "SIGKILL" if kill else "SIGTERM"
        self.host.signal_async(lambda: _kill(container, name))

    def close(self) -> None:
        """Unblock the thread (the agent is stopping); the container keeps running."""
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing races the thread's own close
                pass


def _kill(container: Container, signal_name: str) -> None:
    try:
        container.kill(signal=signal_name)
    except docker.errors.APIError as exc:
        if exc.status_code not in (404, 409):  # gone, or not running: nothing to stop
            log.warning("container %s: %s failed: %s", container.short_id, signal_name, reason(exc))


def _finished_at(text: str) -> float | None:
    if not text or text.startswith("0001-"):  # the engine's zero time: it never finished
        return None
    return parse_timestamp_ns(text) / NS_PER_S


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(record))
    os.replace(tmp, path)
