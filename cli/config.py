"""Where the CLI finds its coordinator: $GPUCTL_CONFIG, else $XDG_CONFIG_HOME/gpuctl/config.yaml.

`url:` is one https:// URL or a list of them (replicas of one coordinator, the preferred first)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from shared.coordinators import parse_coordinators


@dataclass(frozen=True)
class CliConfig:
    url: str | tuple[str, ...]  # one coordinator or several, tried in order (cli/api.py); see `urls`
    token: str
    ca_file: Path

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,) if isinstance(self.url, str) else self.url


def config_path() -> Path:
    if os.environ.get("GPUCTL_CONFIG"):
        return Path(os.environ["GPUCTL_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpuctl" / "config.yaml"


class NoConfig(Exception):
    pass


def load_cli_config() -> CliConfig:
    path = config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NoConfig(f"no CLI config at {path}; start `gpuctl dev` or ask your admin for one") from None
    raw = _read_json(text)
    if raw is None:
        raw = _read_yaml(path, text)
    missing = [k for k in ("url", "token", "ca_file") if not raw.get(k)]
    if missing:
        raise NoConfig(f"{path}: {missing[0]}: required")
    try:
        urls = parse_coordinators(raw["url"], "url")
    except ValueError as exc:
        raise NoConfig(f"{path}: {exc}") from None
    return CliConfig(urls[0] if len(urls) == 1 else urls, str(raw["token"]), Path(raw["ca_file"]))


def _read_json(text: str) -> dict | None:
    """The config as written by save_cli_config: JSON, which is YAML too, read without PyYAML (~12 ms of a
    CLI call that needs no spec file). None for a file that is other YAML."""
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    return raw if isinstance(raw, dict) else None


def _read_yaml(path: Path, text: str) -> dict:
    import yaml

    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise NoConfig(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None


def save_cli_config(config: CliConfig, path: Path | None = None) -> Path:
    """Written 0600: it holds a bearer token. As JSON, a form of YAML that reads fast."""
    from shared import tls  # its certificate authority imports cryptography, which reading needs not

    path = path or config_path()
    url = config.url if isinstance(config.url, str) else list(config.url)
    text = json.dumps({"url": url, "token": config.token, "ca_file": str(config.ca_file)}, indent=2)
    tls.write_private(path, text.encode())
    return path
