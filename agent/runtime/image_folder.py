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

from agent.runtime.engine import ENGINE_ERRORS, EngineUnavailable, connect, reason

log = logging.getLogger("gpuctl.agent")

LOAD_TIMEOUT_S = 3600.0  # a multi-GB archive; the engine answers only once it has read the whole file


class ImageFolder:
    def __init__(self, socket_url: str, folder: Path, record: Path) -> None:
        self.socket_url = socket_url  # loads get a client of their own, with a timeout fit for them
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
            versions = {a: f"{a.stat().st_size}:{a.stat().st_mtime_ns}" for a in archives}
            new = [a for a in archives if done.get(a.name) != versions[a]]
            if not new:
                return []
            try:
                client = connect(self.socket_url, timeout_s=LOAD_TIMEOUT_S)
            except EngineUnavailable as exc:
                log.warning("cannot load image archives: %s", exc)
                return []
            names: list[str] = []
            try:
                for archive in new:
                    names += self._load(client, archive)
                    done[archive.name] = versions[archive]
                    self._save(done)
            finally:
                client.close()
            return names

    def _load(self, client: docker.DockerClient, archive: Path) -> list[str]:
        try:
            with open(archive, "rb") as data:
                images = client.images.load(data)
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
