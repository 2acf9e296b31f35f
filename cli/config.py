"""Where the CLI finds its coordinator: $GPUCTL_CONFIG, else $XDG_CONFIG_HOME/gpuctl/config.yaml."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliConfig:
    url: str
    token: str
    ca_file: Path


def config_path() -> Path:
    if os.environ.get("GPUCTL_CONFIG"):
        return Path(os.environ["GPUCTL_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpuctl" / "config.yaml"


class NoConfig(Exception):
    pass


# A `key: value` line whose value YAML reads as that very string: it starts with a letter or "/" (so it is no
# number, date, alias, tag or directive), holds no space, "#", quote or bracket, and does not end in ":".
_PLAIN_LINE = re.compile(r"([a-z_]+): ([A-Za-z/][\w./:@+=~-]*)", re.ASCII)
_YAML_WORDS = {"yes", "no", "true", "false", "on", "off", "null", "y", "n"}  # plain, yet not strings


def read_plain(text: str) -> dict[str, str] | None:
    """The config as YAML would read it, if every line is a plain `key: value` (what save_cli_config
    writes); None for anything else, which the YAML parser then reads. Importing PyYAML is ~12 ms of a
    CLI call that needs no spec file. Pure."""
    raw = {}
    for line in text.splitlines():
        match = _PLAIN_LINE.fullmatch(line)
        if match is None or match[2].endswith(":") or match[2].lower() in _YAML_WORDS:
            return None
        raw[match[1]] = match[2]
    return raw or None


def load_cli_config() -> CliConfig:
    path = config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NoConfig(f"no CLI config at {path}; start `gpuctl dev` or ask your admin for one") from None
    raw = read_plain(text) or _read_yaml(path, text)
    missing = [k for k in ("url", "token", "ca_file") if not raw.get(k)]
    if missing:
        raise NoConfig(f"{path}: {missing[0]}: required")
    return CliConfig(str(raw["url"]), str(raw["token"]), Path(raw["ca_file"]))


def _read_yaml(path: Path, text: str) -> dict:
    import yaml

    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise NoConfig(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None


def save_cli_config(config: CliConfig, path: Path | None = None) -> Path:
    """Written 0600: it holds a bearer token."""
    import yaml

    from shared import tls  # its certificate authority imports cryptography, which reading needs not

    path = path or config_path()
    text = yaml.safe_dump({"url": config.url, "token": config.token, "ca_file": str(config.ca_file)})
    tls.write_private(path, text.encode())
    return path
