"""Session-wide fixtures: one real Docker engine for every test that asks for `docker_engine`, one real
PostgreSQL server per worker for those that ask for `postgres_server` or `postgres_url`; `database` runs a
store test on SQLite and on PostgreSQL, `log_store`, `archive_store` and `reopen` the log and archive stores
of both backends, and `coordinator_database` a whole coordinator on each."""

from tests.content_stores import archive_store, content_place, coordinator_database, log_store, reopen
from tests.docker_engine import docker_engine_fixture
from tests.postgres import postgres_server, postgres_url
from tests.stores import database

__all__ = [
    "archive_store",
    "content_place",
    "coordinator_database",
    "database",
    "docker_engine_fixture",
    "log_store",
    "postgres_server",
    "postgres_url",
    "reopen",
]
