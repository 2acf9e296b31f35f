"""Images: pull if not present, through the configured registry mirror, with progress for `gpuctl ps`.

A mirror replaces the registry host and keeps the path, as Docker's and containerd's mirrors do:
`nvcr.io/nvidia/pytorch:24.08-py3` is pulled as `MIRROR/nvidia/pytorch:24.08-py3`, and Docker Hub's
`ubuntu:22.04` as `MIRROR/library/ubuntu:22.04`. Without a mirror the reference is pulled as written (the
engine's own registry settings apply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from agent.runtime.engine import ENGINE_ERRORS, reason
from shared.spec import RegistryAuth

DOCKER_HUB = "docker.io"


class ImageError(RuntimeError):
    """One line: which image, and why it cannot be had."""


class PullCancelled(Exception):
    pass


def split_registry(image: str) -> tuple[str, str]:
    """(registry host, path with tag or digest); Docker Hub's short names get their `library/`."""
    first, slash, rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    if not slash:
        return DOCKER_HUB, f"library/{image}"
    return DOCKER_HUB, image


def mirror_reference(image: str, mirror: str | None) -> str:
    """The reference to pull: `image` itself without a mirror, else the mirror's copy of it. Pure."""
    if not mirror or image.startswith(mirror + "/"):
        return image
    _, path = split_registry(image)
    return f"{mirror}/{path}"


@dataclass
class PullProgress:
    """Folds the engine's pull events into one percentage of the bytes to download. Never goes back."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer id -> (done, total) bytes
    percent: int = 0

    def feed(self, event: dict[str, Any]) -> bool:
        """Take one event; True when the percentage moved. Raises ImageError on an error event."""
        if event.get("error"):
            raise ImageError(" ".join(str(event["error"]).split()))
        layer, status = event.get("id", ""), event.get("status", "")
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            self.layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif status in ("Download complete", "Verifying Checksum", "Extracting", "Pull complete"):
            total = self.layers.get(layer, (0, 0))[1]
            self.layers[layer] = (total, total)
        total = sum(t for _, t in self.layers.values())
        if not total:
            return False
        percent = min(100, 100 * sum(d for d, _ in self.layers.values()) // total)
        moved = percent > self.percent
        self.percent = max(self.percent, percent)
        return moved


@dataclass(frozen=True)
class Registry:
    mirror: str | None = None
    username: str | None = None
    password: str | None = None

    def for_job(self, auth: RegistryAuth | None) -> Registry:
        """The job's own credentials, when it gives some, in place of the agent's (same mirror)."""
        if auth is None:
            return self
        return Registry(self.mirror, auth.username, auth.password)

    def auth(self) -> dict[str, str] | None:
        if self.username is None:
            return None
        return {"username": self.username, "password": self.password or ""}


def ensure_image(
    client: docker.DockerClient,
    image: str,
    registry: Registry,
    report: Callable[[str], None],
    cancelled: Callable[[], bool],
    load_archives: Callable[[], object] = list,
) -> str:
    """The local reference to create the container from, pulling it first if it is not on the host (nor in
    an archive that `load_archives` loads).

    Reports "pulling", then "pulling N%", through `report`. Raises ImageError (one line) when the image
    cannot be had, PullCancelled when `cancelled()` turns true during the pull. Blocking: run it in a thread.
    """
    ref = mirror_reference(image, registry.mirror)
    candidates = list(dict.fromkeys((image, ref)))
    for attempt in range(2):
        for candidate in candidates:
            if _present(client, candidate):
                return candidate
        if attempt == 0:
            load_archives()  # it may also wait for a load that started earlier and brings this image
    report("pulling")
    progress = PullProgress()
    try:
        for event in _pull_events(client, ref, registry):
            if cancelled():
                raise PullCancelled()
            if progress.feed(event):
                report(f"pulling {progress.percent}%")
    except ImageError as exc:
        raise ImageError(f"cannot pull image {ref}: {exc}{_hint(registry)}") from None
    except ENGINE_ERRORS as exc:
        raise ImageError(f"cannot pull image {ref}: {reason(exc)}{_hint(registry)}") from None
    if not _present(client, ref):
        raise ImageError(f"cannot pull image {ref}: the engine finished the pull without it")
    return ref


def _hint(registry: Registry) -> str:
    if registry.mirror:
        return ""
    return (
        " (no registry mirror is configured: load the image on the host,"
        " or drop its archive into the agent's docker.image_dir)"
    )


def _pull_events(client: docker.DockerClient, ref: str, registry: Registry) -> Iterator[dict[str, Any]]:
    yield from client.api.pull(ref, stream=True, decode=True, auth_config=registry.auth())


def _present(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False
    except ENGINE_ERRORS as exc:
        raise ImageError(f"cannot look up image {ref}: {reason(exc)}") from None
