"""Short texts for people: what `gpuctl submit` prints while a job waits."""

from __future__ import annotations

import time

import msgspec
from rich.console import Console

from cli.render import attempts_table, hosts_table, jobs_table, queue_table
from cli.text import clean, waiting_line
from shared.describe import index_ranges
from shared.spec import TaskSpec
from shared.wire import AttemptView, HostView, JobView, QueueEntry


def view(status: str, reason: str, image: str | None = "nvcr.io/nvidia/pytorch:24.08-py3") -> JobView:
    spec = TaskSpec(commands=("true",), image=image)
    return JobView(
        id="j", name="n", status=status, reason=reason, priority=0, submitted_at=time.time(), spec=spec
    )


def test_a_pull_shows_as_a_progress_bar() -> None:
    assert waiting_line(view("pulling", "pulling 35%")) == (
        "pulling nvcr.io/nvidia/pytorch:24.08-py3 [#######.............] 35%"
    )
    assert waiting_line(view("pulling", "pulling")) == "pulling nvcr.io/nvidia/pytorch:24.08-py3"


def test_a_pending_job_shows_its_reason() -> None:
    assert (
        waiting_line(view("pending", "no host with 2 free blocks", None))
        == "pending: no host with 2 free blocks"
    )


def printed(renderable: object, width: int = 200) -> str:
    console = Console(width=width, record=True, soft_wrap=False)
    console.print(renderable)
    return console.export_text()


def test_user_text_prints_as_text_without_escapes() -> None:
    job = view(
        "pending", "no host can ever fit this job: h1 is in fleet default, not in [/]\x1b[31mred", None
    )
    host = HostView("id", "[/]\x1b[2Jnode", "ready", None, 0, 0, None, False)

    page = printed(jobs_table([job])) + printed(hosts_table([host]))

    assert "not in [/]red" in page and "[/]node" in page
    assert "\x1b" not in page
    assert (
        waiting_line(job) == "pending: no host can ever fit this job: h1 is in fleet default, not in [/]red"
    )


def test_controls_are_removed_and_line_breaks_become_spaces() -> None:
    assert clean("a\x1b[1;31mb\x1b]8;;http://x\x1b\\c\x07d\x9be\tf\ng\x00") == "abcde f g"


def test_tables_fold_to_the_terminal_width() -> None:
    long_reason = "no host can ever fit this job: " + "; ".join(
        f"host-{i} has no docker runtime" for i in range(9)
    )
    job = view("pending", long_reason, None)
    host = HostView("id", "gpu-node-with-a-long-name-7", "ready", None, 3, 8, time.time(), True)

    for page in (printed(jobs_table([job]), 80), printed(hosts_table([host]), 80)):
        assert max(map(len, page.splitlines())) <= 80


def test_a_job_on_an_unreachable_host_says_what_it_waits_for() -> None:
    job = view("assigned", "unreachable for 40s", None)
    job.host, job.allocation_status = "host-b", "unknown"
    assert waiting_line(job) == "assigned to host-b, waiting for it: unreachable for 40s"
    job.status = "running"
    assert waiting_line(job) == "running on host-b, waiting for it: unreachable for 40s"
    assert "unknown" in printed(jobs_table([job]))


def test_a_crash_looping_job_shows_its_latest_attempts_and_counts_the_rest() -> None:
    attempts = [
        AttemptView(attempt=n, allocation_id=f"a-{n:012d}", host="h1", status="exited") for n in range(1, 178)
    ]
    job = msgspec.structs.replace(view("retrying", "attempt 177 failed"), attempts=attempts)
    page = printed(attempts_table(job))
    assert "a-000000000177" in page and "a-000000000158" in page and "a-000000000157" not in page
    assert "157 earlier attempts not shown; --json lists them all" in page


def test_a_reserved_job_shows_its_estimated_start_within_80_columns() -> None:
    reason = "no host with 8 free blocks; largest free: 3; blocks reserved on gpu-node-7"
    job = msgspec.structs.replace(view("pending", reason, None), estimated_start=1_795_000_000.0)
    entry = QueueEntry("j", "train", "research", "pending", 0, 1.0, time.time(), reason, 1_795_000_000.0)
    said = "estimated start 2026-11-18 11:06 UTC"
    assert waiting_line(job) == f"pending: {reason}; {said}"
    for page in (printed(jobs_table([job]), 80), printed(queue_table([entry]), 80)):
        assert max(map(len, page.splitlines())) <= 80
        assert "estimated" in page and "2026-11-18 11:06" in page  # the reason wraps


def test_a_jobs_gpus_show_as_ranges_of_indices() -> None:
    assert [index_ranges(g) for g in ((0, 1, 2, 3, 4, 5, 6, 7), (0, 1), (4, 0, 1, 2, 6), (5,), ())] == [
        "0-7",
        "0,1",
        "0-2,4,6",
        "5",
        "",
    ]
    job = msgspec.structs.replace(view("running", "", None), gpus=(0, 1, 2, 3, 4, 5, 6, 7), host="vm")
    assert " 0-7 " in printed(jobs_table([job]), 80)
