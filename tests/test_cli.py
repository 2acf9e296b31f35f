"""The `gpuctl` command as a user runs it: `gpuctl dev` in the background, the other commands against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import reachable_tmpdir

GPUCTL = [sys.executable, "-c", "from cli.main import main; main()"]
ROOT = Path(__file__).resolve().parents[1]


def gpuctl(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GPUCTL, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def wait_until_running(env: dict[str, str], job_id: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = json.loads(gpuctl(env, "ps", "--json").stdout)
        if any(job["id"] == job_id and job["status"] == "running" for job in jobs):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not start in {timeout_s:g} s")


@pytest.fixture(scope="module")
def dev() -> Iterator[dict[str, str]]:
    """`gpuctl dev` with 8 simulated H100s cut in blocks of 2, on a free port; yields the CLI's environment."""
    root = reachable_tmpdir()
    env = dict(
        os.environ, GPUCTL_CONFIG=str(root / "config.yaml"), DOCKER_HOST=f"unix://{root}/no-docker.sock"
    )
    log = open(root / "dev.log", "wb")  # noqa: SIM115 - open for the life of the server
    server = subprocess.Popen(
        [
            *GPUCTL,
            "dev",
            "--simulate-gpus",
            "8xH100:80GB",
            "--blocks",
            "4",
            "--port",
            "0",
            "--state-dir",
            str(root / "s"),
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while gpuctl(env, "hosts", "--json").stdout.count('"ready"') < 1:
            assert time.monotonic() < deadline, (root / "dev.log").read_text()
            assert server.poll() is None, (root / "dev.log").read_text()
            time.sleep(0.3)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def test_submit_follows_the_logs_and_exits_with_the_jobs_code(dev: dict[str, str]) -> None:
    run = gpuctl(
        dev, "submit", "--gpu", "H100:2", "--", "sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES; exit 5"
    )
    assert run.returncode == 5, run.stderr
    assert "gpus=0,1\n" in run.stdout  # blocks of 2: a 2-GPU job gets exactly one block


def test_a_job_that_can_never_fit_is_accepted_and_shows_why(dev: dict[str, str]) -> None:
    run = gpuctl(dev, "submit", "-d", "--gpu", "3", "--", "true")
    assert run.returncode == 0
    job_id = run.stdout.strip()
    assert "pending: no host can ever fit this job" in run.stderr and "blocks of 2" in run.stderr
    listed = {j["id"]: j for j in json.loads(gpuctl(dev, "ps", "--json").stdout)}
    assert listed[job_id]["status"] == "pending" and "blocks of 2" in listed[job_id]["reason"]
    assert "pending" in gpuctl(dev, "ps").stdout
    stopped = gpuctl(dev, "stop", job_id)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout


def test_hosts_shows_resources_blocks_and_the_simulated_label(dev: dict[str, str]) -> None:
    table = gpuctl(dev, "hosts").stdout
    assert "8xH100 (80GB)" in table and "/4 busy" in table and "SIMULATED" in table
    (host,) = json.loads(gpuctl(dev, "hosts", "--json").stdout)
    assert host["total_blocks"] == 4 and host["simulated"] is True


def test_devs_one_machine_fleet_is_a_cluster_fleet(dev: dict[str, str]) -> None:
    """A multi-node job there waits for a second host, not for a setting."""
    listed = gpuctl(dev, "fleet", "list").stdout.splitlines()
    assert [line.split() for line in listed] == [
        ["FLEET", "PLACEMENT", "PREEMPTION", "HOSTS", "PROJECTS"],
        ["default", "cluster", "off", "1", "all"],
    ]


def test_logs_and_stop_of_a_running_job(dev: dict[str, str]) -> None:
    job_id = gpuctl(dev, "submit", "-d", "--", "sh", "-c", "echo hello; sleep 300").stdout.strip()
    deadline = time.monotonic() + 20
    while "hello" not in gpuctl(dev, "logs", job_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "stopping" in gpuctl(dev, "stop", job_id).stdout
    followed = gpuctl(dev, "logs", "-f", job_id, timeout_s=30)
    assert followed.stdout == "hello\n"
    assert json.loads(gpuctl(dev, "ps", "-a", "--json").stdout)[0]["status"] == "stopped"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("commands: [true]\nresources:\n  memory: 64GX\n", "bad.yaml:3: resources.memory"),
        ("comands: [true]\n", "bad.yaml:1: comands: unknown field; did you mean 'commands'?"),
        ("commands: [true\n", "bad.yaml:"),
        ("commands: [true]\nresources: {gpu: 0..-1}\n", "bad.yaml:2: resources.gpu"),
    ],
)
def test_bad_specs_get_one_line_naming_field_and_line(spec: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(spec)
    env = dict(os.environ, GPUCTL_CONFIG=str(tmp_path / "none.yaml"))
    run = subprocess.run(
        [*GPUCTL, "submit", "-f", "bad.yaml"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert expected in line, line


def test_without_a_config_the_cli_says_what_to_do(tmp_path: Path) -> None:
    env = dict(os.environ, GPUCTL_CONFIG=str(tmp_path / "none.yaml"))
    run = gpuctl(env, "ps")
    assert run.returncode == 1 and "gpuctl dev" in run.stderr and "Traceback" not in run.stderr


def test_hosts_verbose_shows_devices_blocks_jobs_and_topology(dev: dict[str, str]) -> None:
    (host,) = json.loads(gpuctl(dev, "hosts", "--json").stdout)
    job_id = gpuctl(dev, "submit", "-d", "--gpu", "2", "--", "sleep", "300").stdout.strip()
    try:
        wait_until_running(dev, job_id)  # else the two pages may show it in two states
        page = gpuctl(dev, "hosts", "-v").stdout
        one = gpuctl(dev, "hosts", host["name"]).stdout
        assert page.split("\n", 1)[1] == one.split("\n", 1)[1]  # the same page, past the "seen" time
        assert "devices" in page and "blocks" in page and "topology" in page and "[SIMULATED]" in page
        assert any(job_id in line and line.split()[1] == "0-1" for line in page.splitlines())
        detail = json.loads(gpuctl(dev, "hosts", "--json", host["name"]).stdout)
        assert [a["job_id"] for a in detail["allocations"]] == [job_id]
        missing = gpuctl(dev, "hosts", "no-such-host")
        assert missing.returncode == 1 and "no host 'no-such-host'" in missing.stderr
    finally:
        gpuctl(dev, "stop", job_id)


def test_hosts_remove_of_an_unknown_host_is_one_line(dev: dict[str, str]) -> None:
    run = gpuctl(dev, "hosts", "remove", "no-such-host")
    assert run.returncode == 1 and run.stderr.strip() == "Error: no host 'no-such-host'"


def test_dev_says_which_docker_engine_it_uses_from_docker_host(dev: dict[str, str]) -> None:
    log = (Path(dev["GPUCTL_CONFIG"]).parent / "dev.log").read_text()
    line = next(line for line in log.splitlines() if "docker: " in line)
    assert f"docker: none (Docker engine at {dev['DOCKER_HOST']}: " in line
    assert line.endswith("; jobs with image: will not be placed here")
