"""A failure reason names what failed, never where the agent keeps its state."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

from agent.reasons import public_reason
from shared.spec import TaskSpec
from tests.harness import cluster


def test_paths_under_the_state_dir_become_names_of_what_they_are(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    state.mkdir()
    work = f"{state}/allocs/a-1f2e/work"
    assert (
        public_reason(f"cannot start the job: [Errno 13] Permission denied: '{work}'", state)
        == "cannot start the job: [Errno 13] Permission denied: '<work dir>'"
    )
    staged = f"{state}/files/staged/a-1f2e.partial/work/a/b"
    assert public_reason(f"Not a directory: '{staged}'", state) == "Not a directory: '<work dir>/a/b'"
    assert public_reason(f"x: {state}/allocs/a-1f2e/exit.json", state) == "x: <allocation dir>/exit.json"
    assert public_reason(f"no space: {state}/files/abc", state) == "no space: <agent state dir>/files/abc"
    # Reached through a symlink, the path the OSError names is the resolved one.
    (tmp_path / "link").symlink_to(state)
    assert public_reason(f"'{work}'", tmp_path / "link") == "'<work dir>'"
    # A sibling whose name starts alike, a path outside, an empty reason: untouched.
    for text in (f"'{state}2/allocs/a-1/work'", "'/workflow/x' is missing", ""):
        assert public_reason(text, state) == text
    once = public_reason(f"'{work}'", state)
    assert public_reason(once, state) == once


def _archive_that_cannot_unpack() -> bytes:
    """`a` as a file, then `a/b`: unpacking `a/b` fails with an OSError that names its full path."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name in ("a", "a/b"):
            member = tarfile.TarInfo(name)
            member.size = 1
            tar.addfile(member, io.BytesIO(b"x"))
    return out.getvalue()


async def test_a_start_failure_shows_the_user_no_path_of_the_agents_state_dir() -> None:
    async with cluster() as c:
        config = c.start_agent("h1", "1xL4")
        archive_id = await asyncio.to_thread(c.api.upload_files, _archive_that_cannot_unpack())
        job = await c.submit_spec(TaskSpec(commands=("true",), files_archive=archive_id))
        final = await c.wait_for(job.id, "failed")
        assert final.reason.startswith("files: cannot unpack the archive: "), final.reason
        assert "'<work dir>/a/b'" in final.reason, final.reason
        assert str(config.state_dir) not in final.reason and str(c.root) not in final.reason, final.reason
