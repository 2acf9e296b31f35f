"""The CLI's config file: what save_cli_config writes is read back without PyYAML, and whatever the fast
reader accepts, it reads exactly as YAML does; anything else still goes to YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from cli.config import CliConfig, NoConfig, load_cli_config, read_plain, save_cli_config

KEYS = st.sampled_from(["url", "token", "ca_file", "other"])
# letters, digits, and every character that means something to YAML somewhere in a plain scalar
VALUES = st.text(alphabet="aZy09_./:@+=~-#'\"[]{}!&*?|>%,` \\", max_size=12)
WORDS = st.sampled_from(["true", "No", "ON", "null", "y", "1e3", "0x1F", "12:30", ".inf", "2026-11-29", "~"])


@given(st.lists(st.tuples(KEYS, VALUES | WORDS), min_size=1, max_size=4))
@example([("url", "https://h:1"), ("token", "host:")])  # a trailing ":" makes a mapping: YAML refuses it
@example([("token", "Yes")])
def test_the_fast_reader_reads_what_it_accepts_as_yaml_does(pairs: list[tuple[str, str]]) -> None:
    text = "".join(f"{key}: {value}\n" for key, value in pairs)
    fast = read_plain(text)
    if fast is not None:
        assert fast == yaml.safe_load(text)


def test_a_saved_config_is_read_by_the_fast_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CliConfig("https://gpu-head.example:8443", "gpuctl_Ab-9_x", tmp_path / "pki" / "ca.pem")
    path = save_cli_config(config, tmp_path / "config.yaml")
    monkeypatch.setenv("GPUCTL_CONFIG", str(path))

    assert read_plain(path.read_text()) is not None
    assert load_cli_config() == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "url: 'https://h:1'\ntoken: \"t\"\nca_file: /ca.pem  # ours\n",
            CliConfig("https://h:1", "t", Path("/ca.pem")),
        ),
        ("{url: https://h:1, token: t, ca_file: /ca.pem}\n", CliConfig("https://h:1", "t", Path("/ca.pem"))),
    ],
)
def test_other_yaml_is_read_by_yaml(
    text: str, expected: CliConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    monkeypatch.setenv("GPUCTL_CONFIG", str(tmp_path / "c.yaml"))

    assert read_plain(text) is None
    assert load_cli_config() == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [("url: https://h:1\ntoken: t\n", "ca_file: required"), ("url: [unclosed\n", "invalid YAML")],
)
def test_a_bad_config_is_one_line_naming_the_field(
    text: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    monkeypatch.setenv("GPUCTL_CONFIG", str(tmp_path / "c.yaml"))

    with pytest.raises(NoConfig, match=error):
        load_cli_config()
