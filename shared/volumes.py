"""Which host paths a job may mount: a pure policy that the scheduler applies at placement time (so a job
is refused before it runs, with the reason in `gpuctl ps`) and the agent applies again before it mounts."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


@dataclass(frozen=True)
class Volume:
    host_path: str
    container_path: str


def parse_volume(text: str) -> Volume:
    """`/host:/container` as the spec parser normalized it (dstack's mapping form included)."""
    host, _, container = text.partition(":")
    return Volume(host, container)


def under_prefix(path: str, prefixes: tuple[str, ...]) -> bool:
    """True when the normalized absolute `path` is one of `prefixes` or inside one (by whole components)."""
    clean = posixpath.normpath(path)
    for prefix in prefixes:
        root = posixpath.normpath(prefix)
        if clean == root or clean.startswith(root.rstrip("/") + "/"):
            return True
    return False


def volume_refusal(text: str, prefixes: tuple[str, ...]) -> str | None:
    """Why this host cannot mount the volume, or None when it can. Pure; `..` cannot climb out of a prefix."""
    volume = parse_volume(text)
    if not volume.host_path.startswith("/"):
        return f"cannot mount {text}: named volumes are not supported, only host paths"
    if not prefixes:
        return f"cannot mount {text}: no host path is allowed (agent config docker.volume_prefixes)"
    if not under_prefix(volume.host_path, prefixes):
        return (
            f"cannot mount {text}: {volume.host_path} is not under an allowed prefix ({', '.join(prefixes)})"
        )
    return None


def first_volume_refusal(volumes: tuple[str, ...], prefixes: tuple[str, ...]) -> str | None:
    for text in volumes:
        refusal = volume_refusal(text, prefixes)
        if refusal is not None:
            return refusal
    return None
