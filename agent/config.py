"""The agent's configuration: /etc/gpuctl/agent.yaml, or built in code by `gpuctl dev` and the tests."""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.blocks import BlocksError, parse_blocks
from shared.constants import STOP_GRACE_S
from shared.units import parse_memory_mib

DEFAULT_CONFIG = Path("/etc/gpuctl/agent.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/gpuctl-agent")
UNPRIVILEGED_DEFAULT_USER = "nobody"


class ConfigError(ValueError):
    """One line naming the field."""


@dataclass(frozen=True)
class AgentConfig:
    coordinator: str
    state_dir: Path = DEFAULT_STATE_DIR
    name: str = field(default_factory=socket.gethostname)
    blocks: str | int = "auto"
    simulate: str | None = None
    simulate_cpus: int | None = None
    simulate_memory_mib: int | None = None
    run_as: str | None = None  # plain-process jobs run as this user; see effective_run_as()
    stop_grace_s: float = STOP_GRACE_S
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    join: str | None = None  # a join string: used once, when the agent has no certificate yet

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    def tls_files(self) -> tuple[Path, Path, Path]:
        return (
            self.ca_file or self.pki_dir / "ca.pem",
            self.cert_file or self.pki_dir / "agent.pem",
            self.key_file or self.pki_dir / "agent-key.pem",
        )

    def effective_run_as(self) -> str | None:
        """Never root by default: an agent running as root runs jobs as `run_as`, else as `nobody`.
        An agent that is not root can only run jobs as itself."""
        if os.geteuid() != 0:
            return None
        user = self.run_as or UNPRIVILEGED_DEFAULT_USER
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"run_as: no user {user!r} on this host") from None
        return user


_FIELDS = {
    "coordinator",
    "state_dir",
    "name",
    "blocks",
    "simulate",
    "simulate_cpus",
    "simulate_memory",
    "run_as",
    "stop_grace_s",
    "ca_file",
    "cert_file",
    "key_file",
    "join",
}


def load_config(path: Path, overrides: dict[str, Any]) -> AgentConfig:
    """Read the YAML file (if it exists), apply non-None overrides, validate. Raises ConfigError."""
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        raw = loaded
    raw.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown setting (known: {', '.join(sorted(_FIELDS))})")
    if not raw.get("coordinator"):
        raise ConfigError("coordinator: required (the coordinator's https:// URL)")
    try:
        blocks = parse_blocks(raw.get("blocks", "auto"))
    except BlocksError as exc:
        raise ConfigError(str(exc)) from None
    memory = raw.get("simulate_memory")
    try:
        memory_mib = parse_memory_mib(memory) if memory is not None else None
    except ValueError as exc:
        raise ConfigError(f"simulate_memory: {exc}") from None

    def path_of(key: str) -> Path | None:
        return Path(raw[key]) if raw.get(key) else None

    return AgentConfig(
        coordinator=str(raw["coordinator"]),
        blocks=blocks,
        simulate=raw.get("simulate"),
        simulate_cpus=raw.get("simulate_cpus"),
        simulate_memory_mib=memory_mib,
        run_as=raw.get("run_as"),
        join=raw.get("join"),
        stop_grace_s=float(raw.get("stop_grace_s", STOP_GRACE_S)),
        name=str(raw["name"]) if raw.get("name") else socket.gethostname(),
        state_dir=path_of("state_dir") or DEFAULT_STATE_DIR,
        ca_file=path_of("ca_file"),
        cert_file=path_of("cert_file"),
        key_file=path_of("key_file"),
    )
