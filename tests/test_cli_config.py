"""The CLI's config file: what save_cli_config writes (JSON, a form of YAML) is read back without PyYAML;
a config written by hand in any other YAML is still read, and a bad one gets one line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.config import CliConfig, NoConfig, load_cli_config, save_cli_config

ROOT = Path(__file__).resolve().parents[1]


def test_a_saved_config_is_yaml_and_is_read_without_pyyaml(tmp_path: Path) -> None:
    config = CliConfig("https://gpu-head.example:8443", "gpuctl_Ab-9_x", tmp_path / "pki" / "ca.pem")
    path = save_cli_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load(path.read_text()) == {
        "url": config.url,
        "token": config.token,
        "ca_file": str(config.ca_file),
    }

    probe = "import sys; from cli.config import load_cli_config as l; print(l(), 'yaml' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"GPUCTL_CONFIG": str(path), "PYTHONPATH": str(ROOT)},
    ).stdout
    assert out.strip() == f"{config!r} False"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "url: 'https://h:1'\ntoken: \"t\"\nca_file: /ca.pem  # ours\n",
            CliConfig("https://h:1", "t", Path("/ca.pem")),
        ),
        ("{url: https://h:1, token: t, ca_file: /ca.pem}\n", CliConfig("https://h:1", "t", Path("/ca.pem"))),
        ("url: https://h:1\ntoken: t\nca_file: /ca.pem\n", CliConfig("https://h:1", "t", Path("/ca.pem"))),
    ],
)
def test_other_yaml_is_read_by_yaml(
    text: str, expected: CliConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    monkeypatch.setenv("GPUCTL_CONFIG", str(tmp_path / "c.yaml"))

    assert load_cli_config() == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("url: https://h:1\ntoken: t\n", "ca_file: required"),
        ('{"url": "https://h:1", "token": "t"}', "ca_file: required"),
        ("url: [unclosed\n", "invalid YAML"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_field(
    text: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    monkeypatch.setenv("GPUCTL_CONFIG", str(tmp_path / "c.yaml"))

    with pytest.raises(NoConfig, match=error) as caught:
        load_cli_config()
    assert "\n" not in str(caught.value)
