"""Group commit: writes queued together reach the store in one call (one transaction), every caller resumes
once its row is durable, and a failed write fails each caller of its batch. With the real store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from coordinator.group_commit import GroupCommit
from coordinator.store import Store
from shared.wire import generation_of
from tests.test_store import inventory


async def test_rows_queued_together_are_written_in_one_call() -> None:
    batches: list[list[int]] = []
    commit = GroupCommit(batches.append)
    await asyncio.gather(*(commit.put(n) for n in range(10)))
    assert batches == [list(range(10))]


async def test_a_failed_write_fails_every_caller_of_its_batch() -> None:
    def full_disk(rows: list[int]) -> None:
        raise OSError(28, "No space left on device")

    commit = GroupCommit(full_disk)
    results = await asyncio.gather(*(commit.put(n) for n in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [OSError] * 3


async def test_inventories_are_in_the_store_when_their_callers_resume(database: Path | str) -> None:
    store = Store(database)
    try:
        commit = GroupCommit(store.set_inventories)
        inventories = {f"h{n}": msgspec.structs.replace(inventory(), hostname=f"node{n}") for n in range(5)}
        for host_id in inventories:
            store.ensure_host(host_id, host_id)
        await asyncio.gather(
            *(commit.put((host_id, inv, generation_of(inv))) for host_id, inv in inventories.items())
        )
        again = Store(database)  # another connection: what it sees is committed
        try:
            for host_id, inv in inventories.items():
                host = again.get_host(host_id)
                assert host is not None
                assert (host.inventory, host.generation, host.name) == (inv, generation_of(inv), inv.hostname)
        finally:
            again.close()
    finally:
        store.close()
