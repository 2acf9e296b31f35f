"""The log and archive stores of both backends, as fixtures: each test that asks for `log_store` or
`archive_store` runs twice, on files under a temporary folder (the SQLite default) and on a fresh PostgreSQL
database (tests/postgres.py). `reopen` gives a second store on the same place, as a restarted coordinator
or another replica opens it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.content import open_content
from coordinator.filestore import Archives, FileStore
from coordinator.logstore import Logs
from coordinator.pg_files import PgFileStore

BACKENDS = ["files", "postgresql"]


@pytest.fixture(params=BACKENDS)
def content_place(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], tuple[Logs, Archives]]:
    """Opens the stores of one place, again each call."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return lambda: open_content(tmp_path, url)


@pytest.fixture
def reopen(
    content_place: Callable[[], tuple[Logs, Archives]],
) -> Iterator[Callable[[], tuple[Logs, Archives]]]:
    opened: list[tuple[Logs, Archives]] = []

    def again() -> tuple[Logs, Archives]:
        opened.append(content_place())
        return opened[-1]

    yield again
    for logs, files in opened:
        logs.close()
        files.close()


@pytest.fixture
def log_store(reopen: Callable[[], tuple[Logs, Archives]]) -> Logs:
    return reopen()[0]


@pytest.fixture
def archive_store(reopen: Callable[[], tuple[Logs, Archives]]) -> Archives:
    return reopen()[1]


def bytes_held(store: Archives) -> int:
    """Every byte the archive store holds, whole archives or not: what an upload that failed may leave."""
    if isinstance(store, FileStore):
        return sum(path.stat().st_size for path in store.root.iterdir())
    assert isinstance(store, PgFileStore)
    query = "SELECT coalesce(sum(length(data)), 0) FROM file_chunks"
    return int(store.conn.run(lambda conn: conn.execute(query).fetchone())[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def coordinator_database(request: pytest.FixtureRequest) -> str:
    """What `cluster(database=...)` takes: "" (SQLite under the state dir, logs and archives as files) or a
    fresh PostgreSQL database (everything in it)."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
