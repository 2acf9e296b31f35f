"""The log and archive stores, on files and in PostgreSQL alike: what one acknowledged, a reopened store
(a restarted coordinator, another replica) holds; reads cut anywhere give the same bytes; an archive upload
that fails or is cut short leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from coordinator.content import open_content
from coordinator.filestore import Archives, TooLarge
from coordinator.logstore import Logs
from tests.content_stores import bytes_held
from tests.postgres import PostgresServer, client_tool

Reopen = Callable[[], tuple[Logs, Archives]]


def test_acknowledged_bytes_are_there_for_the_next_coordinator(reopen: Reopen) -> None:
    logs, _ = reopen()
    assert logs.append("a-1", 0, b"first ") == 6
    assert logs.append("a-2", 0, b"other") == 5
    again, _ = reopen()
    assert again.size("a-1") == 6 and again.size("a-9") == 0
    assert again.append("a-1", 0, b"first second") == 12  # the resend overlaps what the first one stored
    assert logs.read("a-1", 0, 100) == b"first second" and logs.read("a-2", 0, 100) == b"other"


def test_reads_cut_anywhere_give_the_bytes_written(log_store: Logs) -> None:
    rng = random.Random(7)
    data = rng.randbytes(20_000)
    offset = 0
    while offset < len(data):  # chunks of every size, some resent, some past a gap
        start = max(0, offset - rng.randrange(0, 50)) if rng.random() < 0.3 else offset
        end = min(len(data), start + rng.randrange(1, 3000))
        if rng.random() < 0.1:
            assert log_store.append("a-1", offset + 5, data[offset + 5 : end + 5]) == offset
        offset = log_store.append("a-1", start, data[start:end])
    for _ in range(200):
        at, size = rng.randrange(0, len(data) + 10), rng.randrange(0, 5000)
        assert log_store.read("a-1", at, size) == data[at : at + size]


def test_an_allocation_id_that_is_no_id_is_refused(log_store: Logs) -> None:
    with pytest.raises(ValueError, match="bad allocation id"):
        log_store.append("../a", 0, b"x")


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def read_all(store: Archives, archive_id: str) -> bytes:
    return b"".join([piece async for piece in store.chunks(archive_id)])


async def test_an_archive_is_stored_once_by_its_hash_and_read_back_whole(reopen: Reopen) -> None:
    _, files = reopen()
    data = random.Random(3).randbytes(2_500_000)  # rows of a MiB and a rest
    archive_id = await files.put(pieces(data, 256 * 1024), len(data))
    assert archive_id == hashlib.sha256(data).hexdigest()
    assert await files.put(pieces(data, 100_000), len(data)) == archive_id  # the same again: one archive
    _, again = reopen()
    assert again.has(archive_id) and again.size(archive_id) == len(data)
    assert await read_all(again, archive_id) == data
    assert not again.has("0" * 64) and again.size("0" * 64) is None and not again.has("../x")


async def test_an_upload_refused_or_cut_short_leaves_nothing(archive_store: Archives) -> None:
    with pytest.raises(TooLarge):
        await archive_store.put(pieces(b"x" * 3000, 1000), 2500)

    def over_quota(archive_id: str, size: int) -> None:
        raise RuntimeError("over quota")

    with pytest.raises(RuntimeError, match="over quota"):
        await archive_store.put(pieces(b"y" * 3000, 1000), 10_000, over_quota)

    async def cut_short() -> AsyncIterator[bytes]:
        yield b"z" * 1000
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await archive_store.put(cut_short(), 10_000)
    assert bytes_held(archive_store) == 0
    for data in (b"x" * 3000, b"y" * 3000, b"z" * 1000):
        assert not archive_store.has(hashlib.sha256(data).hexdigest())


async def test_prune_deletes_old_archives_no_one_keeps(archive_store: Archives) -> None:
    kept = await archive_store.put(pieces(b"kept", 10), 100)
    dropped = await archive_store.put(pieces(b"dropped", 10), 100)
    assert archive_store.prune(set(), older_than=0.0) == []  # young: stays
    assert archive_store.prune({kept}, older_than=float("inf")) == [dropped]
    assert archive_store.has(kept) and not archive_store.has(dropped)
    assert await archive_store.put(pieces(b"dropped", 10), 100) == dropped  # uploaded again: back
    assert await read_all(archive_store, dropped) == b"dropped"


async def test_uploads_of_the_same_bytes_at_once_store_one_archive(archive_store: Archives) -> None:
    data = b"same" * 100_000
    ids = await asyncio.gather(*(archive_store.put(pieces(data, 7000), len(data)) for _ in range(4)))
    assert len(set(ids)) == 1 and await read_all(archive_store, ids[0]) == data


async def test_pg_dump_and_pg_restore_carry_the_logs_and_archives(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The README's backup of a PostgreSQL coordinator: what it kept is in the dump, log bytes and all."""
    source = postgres_server.create_database()
    logs, files = open_content(tmp_path, source)
    logs.append("a-1", 0, b"line 1\n")
    logs.append("a-1", 7, b"line 2\n")
    archive_id = await files.put(pieces(b"the job's files", 4), 100)
    logs.close()
    files.close()
    dump = tmp_path / "gpuctl.dump"
    await asyncio.to_thread(
        subprocess.run, [client_tool("pg_dump"), "--format=custom", f"--file={dump}", source], check=True
    )
    target = postgres_server.create_database()
    restore = [client_tool("pg_restore"), "--no-owner", f"--dbname={target}", dump]
    await asyncio.to_thread(subprocess.run, restore, check=True)
    logs, files = open_content(tmp_path, target)
    try:
        assert logs.read("a-1", 0, 100) == b"line 1\nline 2\n"
        assert await read_all(files, archive_id) == b"the job's files"
    finally:
        logs.close()
        files.close()


def test_a_store_whose_connection_dropped_connects_again_on_the_next_call(
    postgres_url: str, tmp_path: Path
) -> None:
    """A PostgreSQL restart or failover: the call that finds the connection gone is served on a new one."""
    logs, files = open_content(tmp_path, postgres_url)
    try:
        assert logs.append("a-1", 0, b"before ") == 7
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert logs.append("a-1", 7, b"after") == 12
        assert logs.read("a-1", 0, 100) == b"before after" and not files.has("0" * 64)
    finally:
        logs.close()
        files.close()
