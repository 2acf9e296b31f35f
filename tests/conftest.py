"""Session-wide fixtures: one real Docker engine for every test that asks for `docker_engine`."""

from tests.docker_engine import docker_engine_fixture

__all__ = ["docker_engine_fixture"]
