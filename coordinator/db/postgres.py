"""The store on PostgreSQL (psycopg 3, synchronous as the store is): several coordinators share one state.

Transactions. SQLite's `BEGIN IMMEDIATE` makes every write transaction the only writer from its first
statement, and the scheduler's read-modify-writes (read the free blocks, write an allocation) rely on it. A
transaction here keeps exactly that: it first takes one transaction-scoped advisory lock (`WRITE_LOCK`), so
writers run one at a time across all coordinators, and at READ COMMITTED each statement after the lock sees
every write committed before it. A row lock or SERIALIZABLE would let more writers run at once, but the
first needs every read-modify-write to name its rows and the second retries of whole transactions whose
blocks have side effects in memory; the store's transactions are a few milliseconds, and only the leader
schedules. Reads outside a transaction run at once, in autocommit, as SQLite's do under WAL.

Statements. Parameters are bound on the client (`ClientCursor`), as literals: SQLite's SQL compares an
untyped parameter freely (`? IS NULL OR project=?`), which PostgreSQL refuses for a server-side parameter
of unknown type. Booleans go in as 0/1, as SQLite stores them; floats as float8, not numeric.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.types.string import StrDumperUnknown

from coordinator.db import BadDatabase, Connection, redacted, scrubbed
from coordinator.db.dialect import postgres_ddl, postgres_sql

WRITE_LOCK = 0x67707563_746C0001  # pg_advisory_xact_lock: one writer at a time ("gpuctl" 1)
MIGRATE_LOCK = 0x67707563_746C0002  # pg_advisory_lock: one coordinator migrates at a time
CONNECT_TIMEOUT_S = 10
# The server ends a session idle this long inside a transaction, releasing its write lock: a coordinator cut
# off from the database (or paused) mid-transaction would otherwise stop every other coordinator's writes
# until the server notices the dead connection (TCP's keepalive: hours). The store's transactions are
# milliseconds of Python between statements; a scheduling pass's, at the largest fleets, well under this.
IDLE_IN_TRANSACTION_TIMEOUT_S = 60


class Row:
    """A row as sqlite3.Row reads: by position, by column name, unpacked, or as a dict (`dict(row)`)."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key]] if isinstance(key, str) else self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _rows(cursor: psycopg.Cursor[Any]) -> Any:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


class _IntBool(Dumper):
    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class _Float8(Dumper):
    oid = psycopg.postgres.types["float8"].oid

    def dump(self, obj: float) -> bytes:
        return repr(obj).encode()


class _TextWithoutNul(StrDumperUnknown):
    """PostgreSQL's text cannot hold a NUL character, which SQLite's stores; a reason is the agent's text
    (a registry's or a tool's message) and may carry one, and its refused write failed the agent's every
    sync after it. A NUL is stored as U+FFFD, the replacement character."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd"))


class PostgresConnection:
    """psycopg's connection running the store's SQL (`?` marks), as sqlite3's `execute` does.

    A connection the server dropped (its restart, the database's failover) is replaced at the next statement
    outside a transaction: the statement that met the drop fails, those after it run. Inside a transaction
    it is not: the rest of the transaction would run outside it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect(url)
        self.in_tx = False

    def live(self) -> psycopg.Connection[Any]:
        if self.conn.closed and not self.in_tx:
            self.conn = connect(self.url)
        return self.conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self.live().cursor().execute(postgres_sql(sql), parameters)

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cursor = self.live().cursor()
        cursor.executemany(postgres_sql(sql), seq_of_parameters)
        return cursor


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection with the store's adaptations; BadDatabase if the server does not answer."""
    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
            row_factory=_rows,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = scrubbed(reason, url)
        raise BadDatabase(f"database: cannot connect to {redacted(url)}: {reason}") from None
    conn.adapters.register_dumper(bool, _IntBool)
    conn.adapters.register_dumper(float, _Float8)
    conn.adapters.register_dumper(str, _TextWithoutNul)
    timeout_ms = int(IDLE_IN_TRANSACTION_TIMEOUT_S * 1000)
    conn.execute(f"SET idle_in_transaction_session_timeout = {timeout_ms}")
    return conn


class PostgresBackend:
    kind = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = PostgresConnection(url)
        self._writer: PostgresConnection | None = None  # for batched writes made off the event loop
        self._writer_lock = threading.Lock()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.conn.close()
        self.db.conn.close()

    @contextmanager
    def tx(self) -> Iterator[PostgresConnection]:
        with _serialised(self.db):
            yield self.db

    def write_batches(self, sql: str, rows: list[tuple[object, ...]], batch: int) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = PostgresConnection(self.url)
            for start in range(0, len(rows), batch):
                with _serialised(self._writer):
                    self._writer.executemany(sql, rows[start : start + batch])

    @contextmanager
    def reader(self) -> Iterator[PostgresConnection]:
        db = PostgresConnection(self.url)
        try:
            yield db
        finally:
            db.conn.close()

    @contextmanager
    def migration_lock(self) -> Iterator[None]:
        conn = self.db.live()
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))

    def schema_version(self) -> int:
        (version,) = self.db.live().execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version"
        ).fetchone() or (0,)
        return int(version)

    def set_schema_version(self, db: Connection, version: int) -> None:
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def ddl(self, statement: str) -> str:
        return postgres_ddl(statement)


@contextmanager
def _serialised(db: PostgresConnection) -> Iterator[None]:
    """A transaction that is the only writer from its start (see the module's docstring)."""
    conn = db.live()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        db.in_tx = True
        try:
            yield
        finally:
            db.in_tx = False
