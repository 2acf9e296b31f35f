"""The Docker engine: connecting to it, asking whether it answers, and turning its errors into one line."""

from __future__ import annotations

import socket

import docker
import docker.errors
import requests
import urllib3.exceptions

API_VERSION = (
    "1.41"  # Docker 20.10 (Debian 12's docker.io); device requests need 1.40; newer engines accept it
)
API_TIMEOUT_S = 30.0  # one API call; streams (logs, pulls) are read in their own threads
PROBE_TIMEOUT_S = 5.0
MAX_POOL_CONNECTIONS = 64  # each followed log holds one connection

# What talking to the engine can raise: its API errors, and a connection that broke (a stream mid-read too).
ENGINE_ERRORS = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
)


class EngineUnavailable(RuntimeError):
    """The engine does not answer at the configured socket; the message says why, in one line."""


def connect(socket_url: str, timeout_s: float = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the engine at `socket_url` (unix://), checked with a ping. Raises EngineUnavailable."""
    try:
        _can_connect(socket_url.removeprefix("unix://"), timeout_s)
        client = docker.DockerClient(
            base_url=socket_url, timeout=timeout_s, max_pool_size=MAX_POOL_CONNECTIONS, version=API_VERSION
        )
    except ENGINE_ERRORS as exc:
        raise EngineUnavailable(f"Docker engine at {socket_url}: {reason(exc)}") from None
    try:
        client.ping()
    except ENGINE_ERRORS as exc:
        client.close()
        raise EngineUnavailable(f"Docker engine at {socket_url}: {reason(exc)}") from None
    return client


def _can_connect(path: str, timeout_s: float) -> None:
    """Raises OSError when nothing listens at the socket. (The SDK leaks its socket when a connect fails,
    so the agent tries first with one of its own.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        probe.connect(path)


def reason(exc: BaseException) -> str:
    """The engine's own words when it gave some, else the exception's; always one line."""
    text = ""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    text = text or str(exc) or type(exc).__name__
    return " ".join(text.split())
