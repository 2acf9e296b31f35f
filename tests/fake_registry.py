"""A registry mirror for the tests: the Docker Registry HTTP API v2, just enough for an engine to pull one
image by any name, with basic auth, serving its layer slowly so that pull progress can be watched.
The engine pulls from it over plain HTTP: 127.0.0.0/8 is an insecure registry by default."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CHUNK_BYTES = 64 * 1024


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Image:
    manifest: bytes
    blobs: dict[str, bytes]  # digest -> content (the config and the gzipped layer)


def image_from_rootfs(rootfs_tar: bytes) -> Image:
    layer = gzip.compress(rootfs_tar, compresslevel=1, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(rootfs_tar)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": digest(layer),
                }
            ],
        }
    ).encode()
    return Image(manifest, {digest(config): config, digest(layer): layer})


@contextmanager
def fake_registry(
    image: Image, username: str, password: str, layer_seconds: float, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Serve `image` under every name and tag on `host` (a free port by default); yields "HOST:PORT"."""
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.answer(send_body=False)

        def do_GET(self) -> None:
            self.answer(send_body=True)

        def answer(self, send_body: bool) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            manifest = re.fullmatch(r"/v2/(.+)/manifests/[^/]+", self.path)
            blob = re.fullmatch(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})", self.path)
            if self.path == "/v2/":
                self.send(b"{}", "application/json", send_body)
            elif manifest:
                self.send(image.manifest, MANIFEST_TYPE, send_body, digest(image.manifest))
            elif blob and blob.group(1) in image.blobs:
                data = image.blobs[blob.group(1)]
                slow = layer_seconds if len(data) > CHUNK_BYTES else 0.0
                self.send(data, "application/octet-stream", send_body, blob.group(1), slow)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def send(self, data: bytes, kind: str, body: bool, name: str = "", slow_s: float = 0.0) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            if name:
                self.send_header("Docker-Content-Digest", name)
            self.end_headers()
            if not body:
                return
            chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
            for chunk in chunks:
                self.wfile.write(chunk)
                time.sleep(slow_s / len(chunks))

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serve_until_killed(host: str, port: int, username: str, password: str) -> None:
    """An empty image's registry on host:port until the process is killed (for a registry in a namespace)."""
    with fake_registry(image_from_rootfs(b""), username, password, 0.0, host, port):
        threading.Event().wait()
