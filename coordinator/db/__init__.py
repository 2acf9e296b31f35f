"""The store's database, SQLite or PostgreSQL, chosen by a URL (`database:` in coordinator.yaml).

`sqlite:///ABSOLUTE/PATH` is the embedded default: one coordinator, one file. `postgresql://...` (any libpq
URL) lets several coordinators share one state. Both give the store the same things: a connection that runs
the store's SQL (written for SQLite, with `?` marks: coordinator/db/dialect.py adapts it), transactions that
serialise writers, batched writes from a thread, and the schema's version. Modules that run SQL type their
connection as `Connection`, which sqlite3's and the PostgreSQL adapter both are.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

SQLITE_PREFIX = "sqlite://"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class BadDatabase(ValueError):
    """The database cannot be used (a bad URL, unreachable, a schema from a newer release); one line."""


class Row(Protocol):
    """A row by column name or position, as sqlite3.Row and the PostgreSQL adapter's rows both read."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Cursor(Protocol):
    """What the store reads from a statement: rows addressable by column name and by position."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ..., /) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> Cursor: ...


class Backend(Protocol):
    kind: str  # "sqlite" or "postgresql"
    url: str

    @property
    def db(self) -> Connection:
        """The event loop's connection."""
        ...

    def tx(self) -> AbstractContextManager[Connection]:
        """One transaction, durable once the block ends without an exception; one writer at a time."""
        ...

    def write_batches(self, sql: str, rows: list[tuple[object, ...]], batch: int) -> None:
        """`sql` for every row, in transactions of `batch` rows, through a connection of its own (for a
        thread other than the event loop's), one caller at a time."""
        ...

    def reader(self) -> AbstractContextManager[Connection]:
        """A connection of its own for reads in a thread other than the event loop's, closed after."""
        ...

    def migration_lock(self) -> AbstractContextManager[None]:
        """Held while the schema is checked and migrated: two coordinators starting at once migrate once."""
        ...

    def schema_version(self) -> int: ...

    def set_schema_version(self, db: Connection, version: int) -> None: ...

    def ddl(self, statement: str) -> str:
        """A migration's statement (written for SQLite) as this database runs it."""
        ...

    def close(self) -> None: ...


def open_backend(database: Path | str) -> Backend:
    """A path is an SQLite file; a string is a URL. Raises BadDatabase (naming `database`) for anything
    else, or a PostgreSQL that does not answer."""
    if isinstance(database, Path):
        from coordinator.db.sqlite import SqliteBackend

        return SqliteBackend(database)
    if database.startswith(SQLITE_PREFIX):
        path = Path(database[len(SQLITE_PREFIX) :])
        if not path.is_absolute() or path == Path("/"):
            raise BadDatabase(f"database: expected sqlite:///ABSOLUTE/PATH, got {database!r}")
        from coordinator.db.sqlite import SqliteBackend

        return SqliteBackend(path)
    if database.startswith(POSTGRES_PREFIXES):
        from coordinator.db.postgres import PostgresBackend

        return PostgresBackend(database)
    raise BadDatabase(
        f"database: expected sqlite:///ABSOLUTE/PATH or postgresql://..., got {redacted(database)!r}"
    )


def sqlite_url(path: Path) -> str:
    return SQLITE_PREFIX + str(path.resolve())


def redacted(url: str) -> str:
    """The URL with any password (before the host, or as a `password=` parameter) replaced, for messages."""
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{place}"


def scrubbed(message: str, url: str) -> str:
    """`message` (a driver's error about `url`) with the URL redacted and its password nowhere: libpq quotes a
    malformed URL back whole, or the word of it that did not parse, which may be the password."""
    message = message.replace(url, redacted(url))
    for secret in sorted(_passwords(url), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def _passwords(url: str) -> set[str]:
    """The URL's passwords (before the host, and `password=` parameters), as written and as decoded."""
    found = re.findall(r"[?&]password=([^&]*)", url)
    credentials, at, _ = url.partition("://")[2].rpartition("@")
    if at and ":" in credentials:
        found.append(credentials.split(":", 1)[1])
    return {form for raw in found for form in (raw, urllib.parse.unquote(raw)) if form}
