"""A coordinator on PostgreSQL keeps its jobs' logs and file archives in the database, not under its state
dir: a job's files reach its agent from there and its log lands there, byte for byte."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.harness import cluster
from tests.test_files_e2e import project, submit_file


async def test_a_job_on_postgresql_gets_its_files_and_logs_from_the_database(
    postgres_url: str, tmp_path: Path
) -> None:
    task_file = project(tmp_path)
    async with cluster(database=postgres_url) as c:
        c.start_agent("pg-files")
        job_id = await submit_file(c, task_file)
        log = await c.full_log(job_id)
        assert (await c.job(job_id)).status == "done", log
        assert log.decode().splitlines()[:2] == ["print('training')", "lr=0.001"]
        state_dir = c.coordinator.coordinator.state_dir
        assert not (state_dir / "logs").exists() and not (state_dir / "files").exists()
    with psycopg.connect(postgres_url) as conn:
        [(logged,)] = conn.execute("SELECT sum(length(data)) FROM log_chunks").fetchall()
        [(archives,)] = conn.execute("SELECT count(*) FROM file_archives").fetchall()
    assert (logged, archives) == (len(log), 1)
