"""Jobs of different allocations on one host cannot reach each other: each runs as a uid of its own, in a
work dir only it can enter, with a log spool only the agent can read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.agent import job_uids
from agent.config import ConfigError
from agent.runtime.jobuser import UidRange, UidRangeError, check_uid_range, job_uid, parse_uid_range
from tests.harness import child_pid, cluster, reachable_tmpdir

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="per-job uids need an agent running as root"
)


async def test_a_job_cannot_read_enter_or_kill_another_allocations_job() -> None:
    async with cluster() as c:
        config = c.start_agent("h1", simulate="2xH100:80GB")
        a = await c.submit(
            "type: task\nname: a\nenv: [HF_TOKEN=hf_secret]\ncommands: [sleep 8, echo finished]\n"
        )
        await c.wait_for(a.id, "running")
        (a_dir,) = config.state_dir.glob("allocs/*")
        pid = await child_pid(a_dir)
        uid_a = int((a_dir / "job_uid").read_text())
        assert uid_a in config.job_uid_range
        work = (a_dir / "work").stat()
        assert (work.st_uid, work.st_gid, work.st_mode & 0o777) == (uid_a, uid_a, 0o700)
        spool = (a_dir / "output.log").stat()
        assert (spool.st_uid, spool.st_mode & 0o777) == (0, 0o600)
        b = await c.submit(
            "type: task\nname: b\ncommands:\n"
            "  - echo uid=$(id -u)\n"
            f"  - cat /proc/{pid}/environ || echo environ refused\n"
            f"  - ls {a_dir}/work || echo workdir refused\n"
            f"  - cat {a_dir}/output.log || echo log refused\n"
            f"  - touch {a_dir}/work/planted || echo write refused\n"
            f"  - kill -9 {pid} || echo kill refused\n"
        )
        assert (await c.wait_for(b.id, "done", "failed")).status == "done"
        log = (await c.full_log(b.id)).decode()
        for refused in ("environ", "workdir", "log", "write", "kill"):
            assert f"{refused} refused" in log, log
        assert "hf_secret" not in log and "not permitted" in log.lower(), log
        uid_b = int(log.split("uid=")[1].split()[0])
        assert uid_b != uid_a and uid_b in config.job_uid_range
        assert (await c.wait_for(a.id, "done", "failed", timeout_s=30)).status == "done"


async def test_a_jobs_home_never_chooses_what_the_agent_hands_to_it() -> None:
    """The root agent chowns the job's work dir to the job's uid: a HOME from the spec must not pick it."""
    victim = reachable_tmpdir() / "victim"
    victim.mkdir(mode=0o755)
    try:
        async with cluster() as c:
            c.start_agent("h1", simulate="1xH100:80GB")
            job = await c.submit(f"type: task\nenv: {{HOME: {victim}}}\ncommands: [pwd, 'echo $HOME']\n")
            log = (await c.full_log(job.id)).decode()
            assert (await c.job(job.id)).status == "done", log
        assert (victim.stat().st_uid, victim.stat().st_mode & 0o777) == (0, 0o755), "the agent handed it over"
        work, home = log.split()
        assert work.endswith("/work") and home == str(victim)  # the job's cwd is its own; HOME is as it asked
    finally:
        shutil.rmtree(victim.parent)


async def test_a_job_cannot_list_other_jobs_inputs_or_allocations() -> None:
    async with cluster() as c:
        config = c.start_agent("h1", simulate="1xH100:80GB")
        state = config.state_dir
        job = await c.submit(
            f"type: task\ncommands: ['ls {state}/files 2>&1 || true', 'ls {state}/allocs 2>&1 || true',"
            " 'ls $HOME/.. 2>&1 || true', 'stat -c mode=%a $HOME/..']\n"
        )
        log = (await c.full_log(job.id)).decode()
        assert (await c.job(job.id)).status == "done", log
        assert log.count("Permission denied") == 3, log
        assert (state / "files").stat().st_mode & 0o777 == 0o700
        assert "mode=711" in log, log


def test_a_uid_is_kept_per_allocation_and_never_shared(tmp_path: Path) -> None:
    uids = UidRange(200000, 200001)
    first, second = tmp_path / "a-1", tmp_path / "a-2"
    first.mkdir()
    second.mkdir()
    uid = job_uid(first, uids)
    assert job_uid(first, uids) == uid  # a restarted agent re-adopts with the same uid
    assert job_uid(second, uids) == ({200000, 200001} - {uid}).pop()
    third = tmp_path / "a-3"
    third.mkdir()
    with pytest.raises(UidRangeError, match="every uid"):
        job_uid(third, uids)


def test_the_uid_range_must_hold_no_user_or_group_of_the_host(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nsvc:x:200100:100::/:/bin/false\n")
    (tmp_path / "group").write_text("root:x:0:\nlab:x:210000:\n")
    with pytest.raises(UidRangeError, match="user 'svc' \\(id 200100\\)"):
        check_uid_range(UidRange(200000, 265535), tmp_path / "passwd", tmp_path / "group")
    with pytest.raises(UidRangeError, match="group 'lab'"):
        check_uid_range(UidRange(200200, 265535), tmp_path / "passwd", tmp_path / "group")
    check_uid_range(UidRange(300000, 365535), tmp_path / "passwd", tmp_path / "group")
    with pytest.raises(UidRangeError, match="FIRST-LAST"):
        parse_uid_range("lots")


async def test_the_agent_refuses_a_uid_range_with_a_host_user_in_it() -> None:
    async with cluster() as c:
        nobody = 65534
        config = c.agent_config("h1", "1xH100:80GB", job_uid_range=UidRange(nobody - 10, nobody + 10))
        with pytest.raises(ConfigError, match="job_uid_range: .* holds user 'nobody'"):
            job_uids(config)
