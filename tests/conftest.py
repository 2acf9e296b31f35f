"""Session-wide fixtures: one real Docker engine for every test that asks for `docker_engine`, one real
PostgreSQL server per worker for those that ask for `postgres_server` or `postgres_url`; `database` runs a
store test on SQLite and on PostgreSQL."""

from tests.docker_engine import docker_engine_fixture
from tests.postgres import postgres_server, postgres_url
from tests.stores import database

__all__ = ["database", "docker_engine_fixture", "postgres_server", "postgres_url"]
