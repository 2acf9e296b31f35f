"""systemd/*.service: `systemd-analyze verify` is clean, the hardening scores stay where packaging/README.md
says, and the settings the packages rely on are there (readiness, restarts, jobs outliving the agent)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import DEFAULT_STATE_DIR, AgentConfig
from tests.real_parts import part_missing

UNITS = Path(__file__).resolve().parents[1] / "systemd"
# packaging/README.md reports these; a change that weakens a unit fails here first.
MAX_EXPOSURE = {"gpuctl-coordinator.service": 2.0, "gpuctl-agent.service": 6.5}


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        part_missing("needs systemd-analyze (Debian package systemd)")
    return found


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_systemd_analyze_verify_is_clean(name: str, tmp_path: Path) -> None:
    """Verified as installed, with the commands it names present (verify checks they are executable)."""
    analyze = systemd_analyze()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("gpuctl-agent", "gpuctl-coordinator"):
        (bin_dir / command).write_text("#!/bin/sh\n")
        (bin_dir / command).chmod(0o755)
    text = (UNITS / name).read_text().replace("/usr/bin/gpuctl-", f"{bin_dir}/gpuctl-")
    (tmp_path / name).write_text(text)
    run = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True)
    assert run.returncode == 0 and not run.stdout.strip() and not run.stderr.strip(), run.stdout + run.stderr


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_hardening_score(name: str) -> None:
    analyze = systemd_analyze()
    run = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNITS / name)],
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout + run.stderr)
    assert found, run.stdout + run.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE[name]


def test_both_are_notify_services_restarted_on_failure() -> None:
    for name in MAX_EXPOSURE:
        service = unit(name)["Service"]
        assert service["Type"] == ["notify"] and service["Restart"] == ["on-failure"], name


def test_the_agent_starts_only_once_joined_and_its_stop_leaves_jobs_running() -> None:
    agent = unit("gpuctl-agent.service")
    cert = AgentConfig(coordinator="-", state_dir=DEFAULT_STATE_DIR).tls_files()[1]
    assert agent["Unit"]["ConditionPathExists"] == [str(cert)]
    assert agent["Service"]["KillMode"] == ["process"]
    assert agent["Service"]["ExecStart"] == ["/usr/bin/gpuctl-agent run --config /etc/gpuctl/agent.yaml"]


def test_the_coordinator_runs_as_gpuctl_without_capabilities() -> None:
    service = unit("gpuctl-coordinator.service")["Service"]
    assert service["User"] == ["gpuctl"] and service["CapabilityBoundingSet"] == [""]
    for key in ("ProtectSystem", "PrivateTmp", "NoNewPrivileges"):
        assert service[key] in (["strict"], ["yes"]), key
    assert service["StateDirectory"] == ["gpuctl-coordinator"]
