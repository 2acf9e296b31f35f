"""The log path, directly: the coordinator stores a re-sent chunk once and nothing past a gap; the agent resumes
from the offset the coordinator acknowledged across its own restart; megabytes of binary output with partial
lines arrive byte for byte."""

from __future__ import annotations

import asyncio
import os

from coordinator.logstore import Logs
from tests.harness import cluster


def test_a_resent_chunk_is_stored_once(log_store: Logs) -> None:
    assert log_store.append("a-1", 0, b"hello ") == 6
    assert log_store.append("a-1", 0, b"hello ") == 6  # the answer was lost; the agent sends it again
    assert log_store.append("a-1", 3, b"lo world") == 11  # overlaps: only the new bytes land
    assert log_store.append("a-1", 6, b"world") == 11
    assert log_store.read("a-1", 0, 100) == b"hello world"


def test_a_chunk_past_a_gap_is_refused_with_where_to_resume(log_store: Logs) -> None:
    log_store.append("a-1", 0, b"0123")
    assert log_store.append("a-1", 10, b"later") == 4  # bytes 4..9 never came: store nothing, say 4
    assert log_store.read("a-1", 0, 100) == b"0123"
    assert log_store.append("a-1", 4, b"456789later") == 15
    assert log_store.read("a-1", 0, 100) == b"0123456789later"


SLOW = """
resources: {gpu: 1}
commands:
  - for i in $(seq 1 80); do echo "line $i"; sleep 0.05; done
"""


async def test_a_restarted_agent_resumes_from_the_acknowledged_offset(coordinator_database: str) -> None:
    async with cluster(database=coordinator_database) as c:
        coord = c.coordinator.coordinator
        posts: list[tuple[int, int]] = []  # (offset, size) of every chunk the coordinator receives
        append_log = coord.append_log

        def recording(host_id: str, alloc_id: str, offset: int, data: bytes) -> int:
            posts.append((offset, len(data)))
            return append_log(host_id, alloc_id, offset, data)

        coord.append_log = recording  # type: ignore[method-assign]
        config = c.start_agent("host-l", "1xL4")
        job = await c.submit(SLOW)
        view = await c.wait_for(job.id, "running")
        shipped = config.state_dir / "allocs" / str(view.allocation_id) / "shipped"
        async with asyncio.timeout(30):
            while not (shipped.exists() and int(shipped.read_text() or 0) > 0):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await c.stop_agent("host-l")
        acked = int(shipped.read_text())
        before = len(posts)
        c.start_agent("host-l", "1xL4")
        log = await c.full_log(job.id)
        assert log.decode().splitlines() == [f"line {i}" for i in range(1, 81)]
        assert 0 < acked < len(log)
        assert posts[before][0] == acked, (acked, posts[before:])


async def test_megabytes_of_binary_output_with_partial_lines_arrive_byte_for_byte(
    coordinator_database: str,
) -> None:
    async with cluster(database=coordinator_database) as c:
        payload = os.urandom(3 * 1024 * 1024 + 12345) + b"no newline at the end"
        source = c.root / "payload.bin"
        source.write_bytes(payload)
        source.chmod(0o644)  # the job runs as an unprivileged user
        c.start_agent("host-m", "1xL4")
        job = await c.submit(f"resources: {{gpu: 1}}\ncommands: ['cat {source}']\n")
        log = await c.full_log(job.id, timeout_s=120)
        assert len(log) == len(payload) and log == payload
        assert (await c.job(job.id)).status == "done"
