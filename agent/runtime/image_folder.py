"""Image archives an operator drops on a host without a registry (`docker save` output, `.tar`), loaded into
the engine once each: at start-up, and again before any pull, so a job whose image arrived as a file never
needs a registry."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import docker

from agent.runtime.engine import ENGINE_ERRORS, reason

log = logging.getLogger("gpuctl.agent")


class ImageFolder:
    def __init__(self, client: docker.DockerClient, folder: Path, record: Path) -> None:
        self.client = client
        self.folder = folder
        self.record = record  # archive name -> "size:mtime_ns" of the version loaded
        self._lock = threading.Lock()

    def load_new(self) -> list[str]:
        """Load every archive not loaded in its current version; the image names loaded. Safe from any
        thread (one load at a time); a bad archive is logged and retried only once it changes."""
        with self._lock:
            try:
                archives = sorted(p for p in self.folder.iterdir() if p.suffix == ".tar" and p.is_file())
            except FileNotFoundError:
                return []
            done = self._loaded()
            names: list[str] = []
            for archive in archives:
                stat = archive.stat()
                version = f"{stat.st_size}:{stat.st_mtime_ns}"
                if done.get(archive.name) == version:
                    continue
                names += self._load(archive)
                done[archive.name] = version
                self._save(done)
            return names

    def _load(self, archive: Path) -> list[str]:
        try:
            with open(archive, "rb") as data:
                images = self.client.images.load(data)
        except ENGINE_ERRORS as exc:
            log.warning("cannot load image archive %s: %s", archive, reason(exc))
            return []
        names = [tag for image in images for tag in image.tags]
        log.info("loaded image archive %s: %s", archive, ", ".join(names) or "no tagged image")
        return names

    def _loaded(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.record.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _save(self, done: dict[str, str]) -> None:
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(done))
        os.replace(tmp, self.record)
