"""The tests' PostgreSQL starts, and each test's database is its own."""

from __future__ import annotations

import psycopg

from tests.postgres import PostgresServer


def test_each_test_gets_an_empty_database_of_its_own(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x integer)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    other = postgres_server.create_database()
    assert other != postgres_url
    with psycopg.connect(other) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename='t'").fetchone()
    assert tables == (0,)
