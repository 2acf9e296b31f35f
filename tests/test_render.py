"""Short texts for people: what `gpuctl submit` prints while a job waits."""

from __future__ import annotations

import time

from cli.render import waiting_line
from shared.spec import TaskSpec
from shared.wire import JobView


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
