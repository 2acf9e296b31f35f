"""Session-wide fixtures: one real Docker engine for every test that asks for `docker_engine`, one real
PostgreSQL server per worker for those that ask for `postgres_server` or `postgres_url`, and the log and
archive stores of both backends (`log_store`, `archive_store`, `reopen`)."""

from tests.content_stores import archive_store, content_place, log_store, reopen
from tests.docker_engine import docker_engine_fixture
from tests.postgres import postgres_server, postgres_url

__all__ = [
    "archive_store",
    "content_place",
    "docker_engine_fixture",
    "log_store",
    "postgres_server",
    "postgres_url",
    "reopen",
]
