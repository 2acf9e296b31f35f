"""The PostgreSQL column (`python -m bench --postgres`): (b) and (c) run a second time with each coordinator
on a new database of one temporary PostgreSQL, Debian's server started as the tests start theirs
(tests/postgres.py) but durable, fsync on, as the SQLite it is set beside. Its figures join the SQLite rows
as `pg_` columns.

(a) is the scheduler alone, in memory: it reads no database, so it has no such column.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tests.postgres import missing_reason, running_postgres

E2E_COLUMNS = ("jobs_per_s", "p50_ms", "p99_ms", "failed")  # what a row of (c) measured, by "run"
FLEET_COLUMNS = (
    "up",
    "sync_p50_ms",
    "sync_p99_ms",
    "coordinator_cpu",
    "coordinator_peak_rss_mib",
)  # (b), by "agents"


@contextlib.contextmanager
def postgres_databases() -> Iterator[Callable[[], str]]:
    """A maker of new databases' URLs, while the server runs."""
    if reason := missing_reason():
        raise RuntimeError(f"no PostgreSQL column: {reason}")
    with running_postgres(durable=True) as server:
        yield server.create_database


def with_postgres_column(
    rows: list[dict[str, object]],
    on_postgres: list[dict[str, object]],
    key: str = "run",
    columns: tuple[str, ...] = E2E_COLUMNS,
) -> list[dict]:
    """Each SQLite row with the PostgreSQL figures of the same run (the same `key`) beside it."""
    by_key = {row[key]: row for row in on_postgres}
    return [row | {f"pg_{name}": by_key.get(row[key], {}).get(name) for name in columns} for row in rows]


def shown(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The columns of both that fit 80 (the JSON keeps them all): jobs per second and submit-to-running."""
    names = {
        "run": "run",
        "jobs": "jobs",
        "jobs_per_s": "jobs/s",
        "p50_ms": "p50",
        "p99_ms": "p99",
        "pg_jobs_per_s": "pg jobs/s",
        "pg_p50_ms": "pg p50",
        "pg_p99_ms": "pg p99",
    }
    return [{short: row.get(name) for name, short in names.items()} for row in rows]
