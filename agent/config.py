"""The agent's configuration: /etc/gpuctl/agent.yaml, or built in code by `gpuctl dev` and the tests."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.blocks import BlocksError, parse_blocks
from agent.fence import parse_stop_after_s
from agent.link_config import LinkConfigError, parse_bastion, parse_proxy
from agent.mirror_link import DEFAULT_LOCAL_PORT, MirrorLink, local_mirror, split_mirror
from agent.runtime.jobuser import DEFAULT_JOB_UID_RANGE, UidRange, UidRangeError, parse_uid_range
from agent.tunnel import Hop
from shared.constants import STOP_GRACE_S
from shared.coordinators import parse_coordinators
from shared.join import parse_join_string
from shared.units import parse_memory_mib
from shared.wire import is_ip_address

DEFAULT_CONFIG = Path("/etc/gpuctl/agent.yaml")
DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"
DEFAULT_PIDS_LIMIT = 32768  # per container; data loaders start many threads, and every thread is a pid
DEFAULT_STATE_DIR = Path("/var/lib/gpuctl-agent")
JOINED_URLS = "coordinators"  # in the pki dir: a join string's URLs, for runs without `coordinator:`


class ConfigError(ValueError):
    """One line naming the field."""


@dataclass(frozen=True)
class DockerConfig:
    """The `docker:` section (or the top-level `docker_socket` shorthand)."""

    socket: str = DEFAULT_DOCKER_SOCKET  # unix:// URL of the engine's API
    registry_mirror: str | None = None  # host[:port][/prefix]: every pull goes there (air-gapped sites)
    registry_username: str | None = None  # credentials for the mirror
    registry_password: str | None = None
    allow_privileged: bool = False
    volume_prefixes: tuple[str, ...] = ()  # host paths under these may be mounted; none by default
    pids_limit: int = DEFAULT_PIDS_LIMIT
    image_dir: Path | None = None  # image archives (.tar) loaded before any pull; None: <state_dir>/images
    mirror_via_link: bool = False  # the mirror is reached through the agent's bastion or proxy
    mirror_local_port: int = DEFAULT_LOCAL_PORT  # ... at 127.0.0.1:this port, where the engine pulls from

    def pull_mirror(self) -> str | None:
        """The mirror as the engine names it in a pull: 127.0.0.1:PORT/prefix when the agent's link carries
        it, else as configured."""
        if self.mirror_via_link and self.registry_mirror:
            return local_mirror(self.registry_mirror, self.mirror_local_port)
        return self.registry_mirror

    def mirror_link(self) -> MirrorLink | None:
        """What the agent's link must carry for the engine's pulls; None when it carries none."""
        if not (self.mirror_via_link and self.registry_mirror):
            return None
        host, port, _ = split_mirror(self.registry_mirror)
        return MirrorLink(host, port, self.mirror_local_port)


@dataclass(frozen=True)
class AgentConfig:
    coordinator: str | tuple[str, ...]  # one URL or several (tried in order: agent/client.py); see `urls`
    state_dir: Path = DEFAULT_STATE_DIR
    name: str = field(default_factory=socket.gethostname)
    blocks: str | int = "auto"
    simulate: str | None = None
    simulate_cpus: int | None = None
    simulate_memory_mib: int | None = None
    run_as: str | None = None  # every plain-process job runs as this one user; see effective_run_as()
    job_uid_range: UidRange = field(default_factory=lambda: parse_uid_range(DEFAULT_JOB_UID_RANGE))
    stop_grace_s: float = STOP_GRACE_S
    stop_after_coordinator_lost_s: float | None = None  # self-fencing (agent/fence.py); None: off
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    join: str | None = None  # a join string: used once, when the agent has no certificate yet
    docker: DockerConfig = field(default_factory=DockerConfig)
    bastion: tuple[Hop, ...] = ()  # SSH hops to the coordinator, first hop first; () dials directly
    proxy: str | None = None  # an HTTP CONNECT proxy; None: HTTPS_PROXY / NO_PROXY; "": none at all
    internal_ip: str | None = None  # the address peers of a multi-node job reach; None: detected

    @property
    def urls(self) -> tuple[str, ...]:
        """The coordinators' URLs, the preferred first."""
        return (self.coordinator,) if isinstance(self.coordinator, str) else self.coordinator

    @property
    def runtime_dir(self) -> Path:
        """The tunnel's socket and ssh_config: under the state dir, never an open TCP port."""
        return self.state_dir / "run"

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
        """The one named user every job runs as: `run_as`, where the site set it and the agent is root.
        None otherwise: an agent running as root then gives each allocation a uid of its own from
        `job_uid_range`; an agent that is not root can only run jobs as itself."""
        if os.geteuid() != 0 or not self.run_as:
            return None
        user = self.run_as
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
    "job_uid_range",
    "stop_grace_s",
    "stop_after_coordinator_lost",
    "ca_file",
    "cert_file",
    "key_file",
    "join",
    "docker_socket",
    "docker",
    "bastion",
    "proxy",
    "internal_ip",
}
_DOCKER_FIELDS = {
    "socket",
    "registry_mirror",
    "registry_auth",
    "allow_privileged",
    "volume_prefixes",
    "pids_limit",
    "image_dir",
    "mirror_via_link",
    "mirror_local_port",
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
    overrides = dict(overrides)
    hop_identity, hop_known_hosts = (
        overrides.pop("bastion_identity", None),
        overrides.pop("bastion_known_hosts", None),
    )
    raw.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown setting (known: {', '.join(sorted(_FIELDS))})")
    state_dir = Path(raw["state_dir"]) if raw.get("state_dir") else DEFAULT_STATE_DIR
    urls = _coordinators(raw.get("coordinator"), raw.get("join"), state_dir / "pki")
    try:
        blocks = parse_blocks(raw.get("blocks", "auto"))
    except BlocksError as exc:
        raise ConfigError(str(exc)) from None
    memory = raw.get("simulate_memory")
    try:
        memory_mib = parse_memory_mib(memory) if memory is not None else None
    except ValueError as exc:
        raise ConfigError(f"simulate_memory: {exc}") from None

    try:
        uid_range = parse_uid_range(raw.get("job_uid_range", DEFAULT_JOB_UID_RANGE))
    except UidRangeError as exc:
        raise ConfigError(f"job_uid_range: {exc}") from None

    try:
        bastion = parse_bastion(raw.get("bastion"), hop_identity, hop_known_hosts)
        proxy = parse_proxy(raw.get("proxy"))
    except LinkConfigError as exc:
        raise ConfigError(str(exc)) from None
    if bastion and proxy:
        raise ConfigError("proxy: set either a bastion or a proxy, not both")
    docker = parse_docker_config(raw.get("docker") or {}, raw.get("docker_socket"))
    if docker.mirror_via_link and not (bastion or proxy):
        raise ConfigError(
            "docker.mirror_via_link: needs a bastion or a proxy (the route the mirror is reached by)"
        )

    try:
        stop_after_s = parse_stop_after_s(raw.get("stop_after_coordinator_lost"))
    except ValueError as exc:
        raise ConfigError(f"stop_after_coordinator_lost: {exc}") from None

    internal_ip = raw.get("internal_ip")
    if internal_ip is not None and not is_ip_address(str(internal_ip)):
        raise ConfigError(f"internal_ip: expected an IP address, got {internal_ip!r}")

    def path_of(key: str) -> Path | None:
        return Path(raw[key]) if raw.get(key) else None

    return AgentConfig(
        coordinator=urls,
        blocks=blocks,
        simulate=raw.get("simulate"),
        simulate_cpus=raw.get("simulate_cpus"),
        simulate_memory_mib=memory_mib,
        run_as=raw.get("run_as"),
        job_uid_range=uid_range,
        join=raw.get("join"),
        stop_grace_s=float(raw.get("stop_grace_s", STOP_GRACE_S)),
        stop_after_coordinator_lost_s=stop_after_s,
        name=str(raw["name"]) if raw.get("name") else socket.gethostname(),
        state_dir=state_dir,
        ca_file=path_of("ca_file"),
        cert_file=path_of("cert_file"),
        key_file=path_of("key_file"),
        docker=docker,
        bastion=bastion,
        proxy=proxy,
        internal_ip=str(internal_ip) if internal_ip is not None else None,
    )


def _coordinators(value: Any, join: Any, pki_dir: Path) -> tuple[str, ...]:
    """`coordinator:` when set, else the URLs of the join string being used, else those the join string that
    enrolled this host carried (saved by agent.agent at joining). Raises ConfigError naming the field."""
    try:
        if value:
            return parse_coordinators(value)
        if join and (urls := parse_join_string(str(join)).urls):
            return urls
        saved = pki_dir / JOINED_URLS
        if saved.exists():
            return parse_coordinators(saved.read_text().split(), f"{saved}: coordinator")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    raise ConfigError("coordinator: required (the coordinator's https:// URL, or a list of them)")


def parse_docker_config(raw: Any, socket_shorthand: Any = None) -> DockerConfig:
    """The `docker:` mapping. Raises ConfigError naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError("docker: expected a mapping of settings")
    unknown = set(raw) - _DOCKER_FIELDS
    if unknown:
        raise ConfigError(
            f"docker.{sorted(unknown)[0]}: unknown setting (known: {', '.join(sorted(_DOCKER_FIELDS))})"
        )
    auth = raw.get("registry_auth") or {}
    if not isinstance(auth, dict) or set(auth) - {"username", "password"}:
        raise ConfigError("docker.registry_auth: expected a mapping with username and password")
    prefixes = raw.get("volume_prefixes") or []
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p.startswith("/") for p in prefixes):
        raise ConfigError("docker.volume_prefixes: expected a list of absolute host paths")
    pids_limit = raw.get("pids_limit", DEFAULT_PIDS_LIMIT)
    if isinstance(pids_limit, bool) or not isinstance(pids_limit, int) or pids_limit < 1:
        raise ConfigError(f"docker.pids_limit: expected a positive integer, got {pids_limit!r}")
    for flag in ("allow_privileged", "mirror_via_link"):
        if not isinstance(raw.get(flag, False), bool):
            raise ConfigError(f"docker.{flag}: expected true or false")
    if raw.get("mirror_via_link") and not raw.get("registry_mirror"):
        raise ConfigError("docker.mirror_via_link: needs docker.registry_mirror (the mirror to reach)")
    local_port = raw.get("mirror_local_port", DEFAULT_LOCAL_PORT)
    if isinstance(local_port, bool) or not isinstance(local_port, int) or not 0 < local_port < 65536:
        raise ConfigError(f"docker.mirror_local_port: expected a port number, got {local_port!r}")
    return DockerConfig(
        socket=docker_socket_url(raw.get("socket") or socket_shorthand or default_docker_socket()),
        registry_mirror=str(raw["registry_mirror"]).rstrip("/") if raw.get("registry_mirror") else None,
        registry_username=auth.get("username"),
        registry_password=auth.get("password"),
        allow_privileged=raw.get("allow_privileged", False),
        volume_prefixes=tuple(prefixes),
        pids_limit=pids_limit,
        image_dir=Path(raw["image_dir"]) if raw.get("image_dir") else None,
        mirror_via_link=raw.get("mirror_via_link", False),
        mirror_local_port=local_port,
    )


def default_docker_socket(environ: Mapping[str, str] = os.environ) -> str:
    """The engine when no config names one: `DOCKER_HOST` when set, as the docker CLI and SDK do, else the
    default socket. Raises ConfigError for a DOCKER_HOST that is not a local unix socket."""
    value = environ.get("DOCKER_HOST", "")
    if not value:
        return DEFAULT_DOCKER_SOCKET
    try:
        return docker_socket_url(value)
    except ConfigError:
        raise ConfigError(
            f"DOCKER_HOST={value}: only a local engine's unix socket is used (unix:///path); "
            "unset it or name the socket (docker.socket, or gpuctl dev --docker-socket PATH)"
        ) from None


def docker_socket_url(value: Any) -> str:
    """`/run/docker.sock` or `unix:///run/docker.sock` as a unix:// URL. Only local sockets: a TCP engine
    without TLS would hand root on this host to anyone who can reach the port."""
    text = str(value)
    if text.startswith("/"):
        return "unix://" + text
    if text.startswith("unix:///"):
        return text
    raise ConfigError(f"docker.socket: expected a unix socket path like /var/run/docker.sock, got {text!r}")
