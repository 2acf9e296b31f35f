"""Which Docker engine: `DOCKER_HOST` when the agent's config (or `gpuctl dev`'s flag) names none, as the
docker CLI and SDK do; `gpuctl dev` says which engine it uses, or why it found none."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DEFAULT_DOCKER_SOCKET, ConfigError, load_config
from cli.dev import _docker_socket, engine_line
from tests.docker_engine import Engine


def agent_yaml(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text("coordinator: https://coord:8443\n" + extra)
    return path


def test_the_agent_uses_docker_host_when_its_config_names_no_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert load_config(agent_yaml(tmp_path), {}).docker.socket == DEFAULT_DOCKER_SOCKET
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    assert load_config(agent_yaml(tmp_path), {}).docker.socket == "unix:///run/user/1000/docker.sock"
    named = agent_yaml(tmp_path, "docker_socket: /srv/docker.sock\n")
    assert load_config(named, {}).docker.socket == "unix:///srv/docker.sock"


def test_a_remote_docker_host_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.9:2375")
    with pytest.raises(
        ConfigError, match=r"^DOCKER_HOST=tcp://10.0.0.9:2375: only a local engine's unix socket"
    ):
        load_config(agent_yaml(tmp_path), {})


def test_dev_takes_its_flag_over_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///from/env.sock")
    assert _docker_socket(None) == "unix:///from/env.sock"
    assert _docker_socket("/from/flag.sock") == "unix:///from/flag.sock"


def test_dev_says_why_it_has_no_engine(tmp_path: Path) -> None:
    line = engine_line(f"unix://{tmp_path}/none.sock")
    assert line.startswith(f"docker: none (Docker engine at unix://{tmp_path}/none.sock: ")
    assert line.endswith("); jobs with image: will not be placed here")


def test_dev_names_the_engine_and_its_version(docker_engine: Engine) -> None:
    version = docker_engine.client.version()["Version"]
    assert engine_line(docker_engine.socket) == f"docker: {docker_engine.socket} (Docker {version})"
