"""The `gpuctl` command at a terminal and in scripts: widths, exit codes, --json, --version, completion, and
user text that must print as text. Against a real `gpuctl dev`."""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from cli.follow import exit_status
from tests.test_cli import GPUCTL, ROOT, dev, gpuctl

__all__ = ["dev"]


def test_logs_follow_exits_with_the_jobs_exit_code(dev: dict[str, str]) -> None:
    job_id = gpuctl(dev, "submit", "-d", "--", "sh", "-c", "echo bye; exit 7").stdout.strip()

    followed = gpuctl(dev, "logs", "-f", job_id)

    assert followed.returncode == 7, followed.stderr
    assert followed.stdout == "bye\n"


def test_logs_follow_says_once_why_a_pending_job_waits(dev: dict[str, str]) -> None:
    job_id = gpuctl(dev, "submit", "-d", "--gpu", "3", "--", "true").stdout.strip()
    follower = subprocess.Popen(
        [*GPUCTL, "logs", "-f", job_id], env=dev, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(3)  # a few polls of the pending job
    gpuctl(dev, "stop", job_id)
    _, stderr = follower.communicate(timeout=30)

    lines = stderr.decode().splitlines()
    assert [line for line in lines if line.startswith("pending: ")] == [
        next(line for line in lines if "no host can ever fit this job" in line)
    ]
    assert follower.returncode == 1 and f"job {job_id} stopped" in lines


def test_submit_stop_and_logs_speak_json(dev: dict[str, str]) -> None:
    submitted = json.loads(gpuctl(dev, "submit", "--json", "--", "sh", "-c", "echo one; echo two").stdout)
    assert submitted["status"] in ("pending", "assigned", "running") and submitted["spec"]["commands"]

    followed = gpuctl(dev, "logs", "-f", "--json", submitted["id"])
    chunks = [json.loads(line) for line in followed.stdout.splitlines()]
    assert "".join(c["text"] for c in chunks) == "one\ntwo\n"
    assert chunks[0]["offset"] == 0 and chunks[-1]["complete"] and chunks[-1]["exit_code"] == 0

    sleeper = gpuctl(dev, "submit", "-d", "--", "sleep", "300").stdout.strip()
    stopped = json.loads(gpuctl(dev, "stop", "--json", sleeper).stdout)
    assert stopped["id"] == sleeper and stopped["stop_requested"] is True


def test_listings_fit_80_columns_and_print_user_text_as_text(dev: dict[str, str], tmp_path: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text('commands: [true]\nfleets: ["[/]\\e[31mred", "a-fleet-with-quite-a-long-name-indeed"]\n')
    job_id = gpuctl(dev, "submit", "-d", "-f", str(task)).stdout.strip()
    narrow = dict(dev, COLUMNS="80")
    try:
        for args in (("ps",), ("hosts",), ("hosts", "-v")):
            run = gpuctl(narrow, *args)
            assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
            assert max(map(len, run.stdout.splitlines())) <= 80, run.stdout
            assert "\x1b" not in run.stdout
        listing = gpuctl(narrow, "ps").stdout
        assert job_id in listing and "[/]red" in "".join(line.strip() for line in listing.splitlines())
    finally:
        gpuctl(dev, "stop", job_id)


def test_version_is_the_packages() -> None:
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    run = gpuctl(dict(os.environ), "--version")
    assert run.returncode == 0 and run.stdout == f"gpuctl {expected}\n"


def test_completion_scripts_complete_gpuctls_commands() -> None:
    for shell in ("bash", "zsh", "fish"):
        run = gpuctl(dict(os.environ), "completion", shell)
        assert run.returncode == 0 and "_GPUCTL_COMPLETE" in run.stdout, (shell, run.stderr)
    # what the bash script asks gpuctl when the user presses tab after `gpuctl su`
    env = dict(os.environ, _GPUCTL_COMPLETE="bash_complete", COMP_WORDS="gpuctl su", COMP_CWORD="1")
    asked = subprocess.run(
        [*GPUCTL[:-1], "from cli.main import main; main(prog_name='gpuctl')"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "plain,submit" in asked.stdout.splitlines()
    assert gpuctl(dict(os.environ), "completion", "csh").returncode == 2


@pytest.mark.parametrize(
    ("status", "exit_code", "expected"),
    [
        ("done", 0, 0),
        ("failed", 3, 3),
        ("failed", 256, 1),  # sys.exit(256) would be 0 to the shell
        ("failed", -9, 137),  # killed by SIGKILL, as a shell reports it
        ("stopped", 0, 1),  # stopped is not success, whatever its process said
        ("lost", None, 1),
        ("failed", -(2**31), 1),
    ],
)
def test_the_cli_exits_as_a_shell_would_and_never_0_unless_done(
    status: str, exit_code: int | None, expected: int
) -> None:
    assert exit_status(status, exit_code) == expected
