"""`gpuctl-coordinator init`: creates the CA (key 0600), the server certificate and the admin token once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509

from shared import tls

INIT = [sys.executable, "-c", "from coordinator.main import main; main()", "init"]


def test_init_creates_everything_once_and_rerunning_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nserver_names: [gpu-coord.example, 10.0.0.5]\n")
    first = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=True)
    pki = tmp_path / "state" / "pki"
    files = {p.name: p.read_bytes() for p in pki.iterdir()}
    assert (pki / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (pki / "server-key.pem").stat().st_mode & 0o777 == 0o600
    token = first.stdout.split("admin token:")[1].split()[0]
    assert token.startswith("gpuctl_")
    server = x509.load_pem_x509_certificate(files["server.pem"])
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gpu-coord.example" in sans.get_values_for_type(x509.DNSName)
    second = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=True)
    assert second.stdout == first.stdout
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == files


def test_an_unknown_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {tmp_path}\nprot: 8443\n")
    run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "Error: prot: unknown setting (known: advertise_urls, backfill_depth, database, disk_floor, fair_share_half_life, "
        "fleet_lost_after, host, leader_lease, log_cap, lost_after, max_array_tasks, metrics_interval, port, python_image, "
        "server_names, state_dir, unreachable_after, upload_quota)"
    ]


def test_a_bad_disk_limit_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {tmp_path}\ndisk_floor: plenty\n")
    run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "Error: disk_floor: expected a size like 80GB or 512MB, got 'plenty'"
    ]


def test_init_prints_the_ca_pin_and_a_ready_login_line(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nserver_names: [localhost, gpu-coord.example]\nport: 9443\n"
    )
    run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=True)
    pin = tls.ca_pin((tmp_path / "state" / "pki" / "ca.pem").read_bytes())
    token = run.stdout.split("admin token:")[1].split()[0]
    assert f"CA pin:         {pin}\n" in run.stdout
    assert f"  gpuctl login https://gpu-coord.example:9443 --token {token} --ca-pin {pin}\n" in run.stdout


def test_fair_shares_half_life_comes_from_the_config(tmp_path: Path) -> None:
    from coordinator.main import _load

    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {tmp_path}\nfair_share_half_life: 3d\n")
    assert _load(config, None, None, None).settings.fair_share_half_life_s == 3 * 86400
    config.write_text(f"state_dir: {tmp_path}\nfair_share_half_life: never\n")
    run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.stderr.strip() == (
        "Error: fair_share_half_life: expected a duration like 30s or 10m, got 'never'"
    )


def test_metrics_interval_comes_from_the_config(tmp_path: Path) -> None:
    from coordinator.main import _load

    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {tmp_path}\nmetrics_interval: 30s\n")
    assert _load(config, None, None, None).settings.metrics_interval_s == 30
    for value, error in (
        ("often", "metrics_interval: expected a duration like 30s or 10m, got 'often'"),
        ("0s", "metrics_interval: must be longer than 0s, got '0s'"),
    ):
        config.write_text(f"state_dir: {tmp_path}\nmetrics_interval: {value}\n")
        run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
        assert run.stderr.strip() == f"Error: {error}"


def test_backfill_depth_comes_from_the_config(tmp_path: Path) -> None:
    from coordinator.main import _load

    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {tmp_path}\nbackfill_depth: 0\n")
    assert _load(config, None, None, None).settings.backfill_depth == 0
    config.write_text(f"state_dir: {tmp_path}\nbackfill_depth: lots\n")
    run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.stderr.strip() == "Error: backfill_depth: expected a whole number from 0 to 1000, got 'lots'"


def test_lease_settings_come_from_the_config_and_the_flags_win(tmp_path: Path) -> None:
    from coordinator.main import _load

    config = tmp_path / "coordinator.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nunreachable_after: 45s\nlost_after: 15m\nfleet_lost_after: {{dc1: 1h}}\n"
        "leader_lease: 4s\n"
    )
    settings = _load(config, None, None, None).settings
    assert (settings.unreachable_after_s, settings.lost_after_s, settings.leader_lease_s) == (
        45.0,
        900.0,
        4.0,
    )
    assert settings.fleet_lost_after_s == {"dc1": 3600.0}
    config.write_text(f"state_dir: {tmp_path}\nlost_after: soon\n")
    run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.stderr.strip() == "Error: lost_after: expected a duration like 30s or 10m, got 'soon'"
    config.write_text(f"state_dir: {tmp_path}\nleader_lease: -1s\n")
    run = subprocess.run([*INIT, "--config", str(config)], capture_output=True, text=True, check=False)
    assert run.stderr.strip().startswith("Error: leader_lease: ") and "Traceback" not in run.stderr
    bad_flag = subprocess.run(
        [
            sys.executable,
            "-c",
            "from coordinator.main import main; main()",
            "run",
            "--config",
            "/nonexistent",
            "--state-dir",
            str(tmp_path),
            "--lost-after",
            "0s",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad_flag.stderr.strip() == "Error: --lost-after: must be longer than 0s, got '0s'"
