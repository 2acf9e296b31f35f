"""A store on each backend: `database` is what `Store` opens, an SQLite file or a fresh PostgreSQL database
(tests/postgres.py), so a store test that takes it runs once on each."""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "coordinator.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
