"""The task spec: the YAML a user submits, compatible with dstack's task files.

`parse_spec` turns YAML text into a `TaskSpec`; every error is a `SpecError` whose one-line message names the
field and the YAML line. The structs below are also the wire form of a spec (the CLI parses, the coordinator
re-validates the decoded JSON with `validate_spec`).
"""

from __future__ import annotations

import difflib
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec
import yaml

from shared.units import format_mib, parse_duration_s, parse_memory_mib


class Range(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An inclusive range; None on a side means unbounded. `Range(2, 2)` is exactly 2."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class GpuRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """dstack's `vendor:name(s):memory:count` grammar, parsed, plus DRA-style attributes of the mapping form.

    `memory_mib` is per GPU. `count` defaults to exactly 1 when a gpu is named without a count. A
    `compute_capability` range implies NVIDIA (only NVIDIA GPUs have one).
    """

    count: Range = Range(1, 1)
    vendor: str | None = None  # "nvidia" | "amd" | "intel"
    names: tuple[str, ...] = ()  # ("A10G", "A100"): any of them; empty means any model
    memory_mib: Range | None = None
    compute_capability: Range | None = None  # NVIDIA's CUDA compute capability, `8.0..` → Range(8.0, None)


class Resources(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gpu: GpuRequest | None = None  # None: the job asks for no GPU
    cpu: Range | None = None  # cores
    memory_mib: Range | None = None
    disk_mib: Range | None = None
    shm_size_mib: int | None = None


class RegistryAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Credentials for pulling the job's image. Only the agent that runs the job sees the password: every
    view of the job shows it as `REDACTED` (see `redacted`)."""

    username: str
    password: str


class Repo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A remote git repository that the agent clones (through its proxy) before the commands run. A local
    repository never travels as a `Repo`: the CLI packs it into the job's files archive, like `files:`."""

    url: str
    branch: str | None = None  # None: the remote's default branch
    hash: str | None = None  # a commit to check out after the clone
    path: str = "."  # where, relative to the working directory


class TaskSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Empty only for a job with an image: it runs the image's own entrypoint and command (as dstack does).
    commands: tuple[str, ...] = ()
    type: str = "task"
    name: str | None = None
    image: str | None = None
    env: dict[str, str] = {}
    resources: Resources = Resources()
    nodes: int = 1
    volumes: tuple[str, ...] = ()
    working_dir: str | None = None
    max_duration_s: int | None = None
    priority: int = 0
    fleets: tuple[str, ...] = ()
    stop_duration_s: int | None = None  # SIGTERM, then SIGKILL after this; None: the agent's default (10 s)
    privileged: bool = False  # containers only; a host runs it only if its agent config allows it
    # sha256 (hex) of a tar.gz the coordinator stores, unpacked into the working directory before the
    # commands start; the local paths it was packed from never leave the CLI (see `TaskFile.files`)
    files_archive: str | None = None
    registry_auth: RegistryAuth | None = None
    # The shell that runs `commands`: "sh", "bash" or an absolute path; None: /bin/sh
    shell: str | None = None
    # dstack's `python: "3.11"`: the coordinator sets `image` from its `python_image` setting at submit
    python: str | None = None
    repos: tuple[Repo, ...] = ()  # remote repositories only (see `Repo`)
    # sha256 (hex) of a tar.gz whose member paths are absolute paths in the container with the leading "/"
    # dropped (`files: [~/.ssh/id_rsa:/root/.ssh/id_rsa]`); copied into the container before it starts.
    # Containers only: a plain-process job with one is refused.
    root_files_archive: str | None = None


@dataclass(frozen=True)
class TaskFile:
    """A parsed task file: the wire spec, and what only the CLI needs. `files` holds (local path, path
    relative to the working directory) pairs, in order; local paths are as written (relative ones are
    resolved by the CLI against the task file's folder)."""

    spec: TaskSpec
    files: tuple[tuple[str, str], ...] = ()


class SpecError(ValueError):
    """A spec the user must fix. `str()` is one line: `<source>:<line>: <field>: <what is wrong>`."""

    def __init__(self, field: str, message: str, line: int | None = None, source: str = "spec") -> None:
        self.field = field
        self.message = message
        self.line = line
        self.source = source
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


# --- limits --------------------------------------------------------------------------------------------------

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,59}")  # dstack-style run name, at most 60 characters
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
GPU_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,63}")
GPU_VENDORS = ("nvidia", "amd", "intel")
MIN_PRIORITY, MAX_PRIORITY = 0, 100  # dstack's range
MAX_NODES = 1000
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV_ENTRIES = 1000
MAX_ENV_VALUE_BYTES = 64 * 1024
MAX_IMAGE_CHARS = 512
MAX_PATH_BYTES = 4096  # working_dir, each side of a volume, a fleet name
MAX_LIST_ITEMS = 1000  # commands, volumes, fleets, files
WORKFLOW_DIR = (
    "/workflow"  # dstack's working directory: an absolute `files` path under it is relative to ours
)
_ARCHIVE_ID_RE = re.compile(r"[0-9a-f]{64}")
MAX_GPU_NAMES = 32
MAX_RANGE_VALUE = 2**53  # cores, GPUs, MiB: far beyond any machine, and exact as a float
MAX_DURATION_S = 10 * 366 * 86400
MAX_STOP_DURATION_S = 3600  # a host's blocks stay taken while a job stops: an hour is already generous
MAX_CREDENTIAL_BYTES = 8 * 1024  # a registry token (a JWT, an NGC key) fits many times over
REDACTED = "<redacted>"
_INTERPOLATION_RE = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")

# dstack task fields we accept and ignore for now.
IGNORED_FIELDS = frozenset(
    {
        "retry",
        "python",
        "ports",
        "spot_policy",
        "backends",
        "regions",
        "idle_duration",
        "utilization_policy",
        "shell",
        "schedule",
    }
)

_UNSUPPORTED_GPU_VENDORS = ("tpu", "google")
_TPU_NAME_RE = re.compile(r"v\d[a-z]*-\d+", re.IGNORECASE)  # v5litepod-8, v2-8
_COUNT_TOKEN_RE = re.compile(r"[+-]?\d*\.\.[+-]?\d*|[+-]?\d+", re.ASCII)
_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)", re.ASCII)
_KNOWN_GPU_MODELS = {
    "nvidia": "h100 h100nvl h200 gh200 b100 b200 gb200 a100 a10 a10g a30 a40 a16 a2 l4 l40 l40s t4 v100 p100 p40 "
    "p4 k80 m60 a4000 a5000 a6000 rtx4000 rtx5000 rtx6000 rtx8000",
    "amd": "mi300x mi300a mi308x mi325x mi355x mi250 mi250x mi210 mi100 mi50",
    "intel": "gaudi gaudi2 gaudi3",
}
_KNOWN_GPU_VENDOR = {
    model: vendor for vendor, models in _KNOWN_GPU_MODELS.items() for model in models.split()
}

_GPU_PART_LABELS = {
    "vendor": "vendor",
    "names": "name part (list alternative names in one part: A10G,A100)",
    "memory": "memory size",
    "count": "count",
}

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_COUNT_EXPECTED = "a GPU count like 2, 1..8 or 2.."
_CPU_EXPECTED = "a number of cores like 8, 2..8 or 4.."
_SIZE_RANGE_EXPECTED = "a size like 64GB or a range like 24GB..80GB or 64GB.."
_SIZE_EXPECTED = "a size like 16GB or 512MB"
_CAPABILITY_EXPECTED = "a compute capability like 8.0, 8.0.. or 8.0..9.0"
_CAPABILITY_RE = re.compile(r"\d{1,2}(\.\d)?", re.ASCII)
MAX_COMPUTE_CAPABILITY = 99.9
_DURATION_EXPECTED = "a duration like 2h, 30m or 1h30m, or off"


# --- public API ----------------------------------------------------------------------------------------------


def parse_spec(text: str, *, source: str = "spec", environ: Mapping[str, str] | None = None) -> TaskSpec:
    """Parse and validate a dstack-compatible task file.

    Every problem raises `SpecError` with a one-line message `<source>:<line>: <field>: <what>`, where
    `<field>` is the dotted path (`resources.gpu`, `env.HF_TOKEN`, `commands[2]`). A bare `NAME` in `env`
    takes its value from `environ`; `environ=None` means an empty environment (callers pass `os.environ`).
    The result has already passed `validate_spec`.
    """
    return parse_task(text, source=source, environ=environ).spec


def parse_task(text: str, *, source: str = "spec", environ: Mapping[str, str] | None = None) -> TaskFile:
    """`parse_spec`, keeping what only the CLI needs: the `files` to pack (see `TaskFile`)."""
    try:
        root = _compose(text)
        return _build_task(root, {} if environ is None else environ)
    except SpecError as error:
        raise SpecError(error.field, error.message, error.line, source) from None


def validate_spec(spec: TaskSpec) -> TaskSpec:
    """Check a `TaskSpec` decoded from JSON (types already checked by msgspec) against the rules `parse_spec`
    enforces; returns it normalized (a GPU request for exactly 0 GPUs becomes `gpu=None`).

    Raises `SpecError` naming the field, without a line.
    """
    _check_type(spec.type)
    if spec.name is not None:
        _check_name(spec.name)
    if spec.image is not None:
        _check_image(spec.image)
    _check_commands(spec.commands)
    _check_env(spec.env)
    _check_resources(spec.resources)
    _check_nodes(spec.nodes)
    _check_volumes(spec.volumes)
    if spec.working_dir is not None:
        _check_working_dir(spec.working_dir)
    _check_max_duration(spec.max_duration_s)
    _check_priority(spec.priority)
    _check_fleets(spec.fleets)
    _check_stop_duration(spec.stop_duration_s)
    _check_files_archive(spec.files_archive)
    _check_registry_auth(spec.registry_auth, spec.image)
    gpu = spec.resources.gpu
    if gpu is not None and gpu.count.max == 0:
        return msgspec.structs.replace(spec, resources=msgspec.structs.replace(spec.resources, gpu=None))
    return spec


def redacted(spec: TaskSpec) -> TaskSpec:
    """`spec` as users may see it: the registry password hidden."""
    if spec.registry_auth is None:
        return spec
    return msgspec.structs.replace(
        spec, registry_auth=msgspec.structs.replace(spec.registry_auth, password=REDACTED)
    )


def parse_gpu(text: str) -> GpuRequest | None:
    """Parse dstack's gpu string (`H100:80GB:2`, `A10G,A100`, `amd:2`, `24GB..40GB:2`, `1..8`, `8`).

    Colon-separated parts in any order: a vendor, comma-separated alternative names, per-GPU memory (a size
    or a range), and a count (an int or a range; exactly 1 if absent). The vendor is inferred from well-known
    names when all of them agree. Returns None for a request of exactly 0 GPUs. Raises `ValueError` with a
    one-line message; the result has passed the same checks as `validate_spec`.
    """
    parts: dict[str, Any] = {}
    for token in text.split(":"):
        kind, value = _gpu_token(token.strip(), text)
        if kind in parts:
            raise ValueError(f"more than one {_GPU_PART_LABELS[kind]} in {_quote(text)}")
        parts[kind] = value
    names = parts.get("names", ())
    gpu = GpuRequest(
        count=parts.get("count", Range(1, 1)),
        vendor=_gpu_vendor(parts.get("vendor"), names),
        names=names,
        memory_mib=parts.get("memory"),
    )
    try:
        _check_gpu(gpu, "")
    except SpecError as error:
        raise ValueError(error.message) from None
    return None if gpu.count.max == 0 else gpu


# --- YAML nodes ----------------------------------------------------------------------------------------------


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree of `text` (None for an empty document); malformed YAML raises a one-line SpecError."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "malformed document"
        if error.context and error.problem and error.problem.startswith("but "):
            problem = f"{error.context}, {error.problem}"
        raise SpecError("", f"invalid YAML: {_one_line(problem)}", mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        problem = f"unacceptable character #x{error.character:04x}: {error.reason}"
        raise SpecError("", f"invalid YAML: {_one_line(problem)}", line) from None
    except yaml.YAMLError as error:
        raise SpecError("", f"invalid YAML: {_one_line(str(error))}") from None
    except RecursionError:
        raise SpecError("", "invalid YAML: nested too deeply") from None


def _line(node: yaml.Node) -> int:
    """The 1-based line where `node` starts."""
    return node.start_mark.line + 1


def _fail(node: yaml.Node, path: str, message: str) -> NoReturn:
    raise SpecError(path, message, _line(node))


@contextmanager
def _at(node: yaml.Node) -> Iterator[None]:
    """Give any line-less SpecError raised inside the block the line of `node`."""
    try:
        yield
    except SpecError as error:
        if error.line is not None:
            raise
        raise SpecError(error.field, error.message, _line(node)) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _quote(text: str, max_chars: int = 60) -> str:
    """`text` quoted and escaped for a one-line message, shortened when long."""
    return repr(text) if len(text) <= max_chars else repr(text[:max_chars]) + "..."


def _describe(node: yaml.Node) -> str:
    """How a node reads in 'expected X, got Y'."""
    if isinstance(node, yaml.ScalarNode):
        return "null" if node.tag == _NULL_TAG else _quote(node.value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _child(path: str, key: str) -> str:
    """The dotted path of `key` under `path`; odd keys are quoted so the path stays one line."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
        return f"{path}[{_quote(key)}]"
    return f"{path}.{key}" if path else key


def _scalar_value(node: yaml.Node, path: str) -> Any:
    """The Python value of a scalar node under YAML's safe rules (`off` is False, `8` is 8)."""
    if not isinstance(node, yaml.ScalarNode):
        _fail(node, path, f"expected a single value, got {_describe(node)}")
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError, ArithmeticError, TypeError):
        _fail(node, path, f"invalid value {_describe(node)}")


def _text(node: yaml.Node, path: str) -> str:
    """A scalar as written (so `true` stays "true"); null, lists and mappings are errors."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL_TAG:
        _fail(node, path, f"expected a string, got {_describe(node)}")
    return node.value


def _integer(node: yaml.Node, path: str) -> int:
    value = _scalar_value(node, path)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(node, path, f"expected an integer, got {_describe(node)}")
    return value


def _items(node: yaml.Node, path: str) -> list[yaml.Node]:
    """The items of a list node; a single non-null scalar counts as a list of one."""
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL_TAG:
        return [node]
    _fail(node, path, f"expected a list, got {_describe(node)}")


def _fields(node: yaml.Node, path: str, known: Iterable[str] | None) -> Iterator[tuple[str, yaml.Node]]:
    """(key, value node) of a mapping node, in order; rejects duplicates and, unless `known` is None, keys not
    in `known` (suggesting the closest known key)."""
    if not isinstance(node, yaml.MappingNode):
        _fail(node, path, f"expected a mapping, got {_describe(node)}")
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            _fail(key_node, path, f"field names must be strings, got {_describe(key_node)}")
        key = key_node.value
        if key in seen:
            _fail(key_node, _child(path, key), "duplicate field")
        seen.add(key)
        if known is not None and key not in known:
            _fail(key_node, _child(path, key), _unknown_field_message(key, sorted(known)))
        yield key, value_node


def _unknown_field_message(key: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(key, known, n=1)
    if matches:
        return f"unknown field; did you mean {matches[0]!r}?"
    if len(known) <= 10:
        return f"unknown field; expected one of {', '.join(known)}"
    return "unknown field"


# --- YAML -> TaskSpec ----------------------------------------------------------------------------------------

_Parser = Callable[[yaml.Node, str], Any]


def _build_task(root: yaml.Node | None, environ: Mapping[str, str]) -> TaskFile:
    """Walk the top-level mapping, parse each field at its node, and validate the whole."""
    if root is None or _is_null(root):
        raise SpecError("", "empty spec; expected a mapping with at least 'commands'", 1)
    parsers = _top_level_parsers(environ)
    fields: dict[str, Any] = {}
    files: tuple[tuple[str, str], ...] = ()
    auth_node = None
    for key, value_node in _fields(root, "", parsers.keys() | IGNORED_FIELDS | {"files", "registry_auth"}):
        if key in IGNORED_FIELDS or _is_null(value_node):
            continue
        if key == "files":
            files = _parse_files(value_node, key)
        elif key == "registry_auth":
            auth_node = value_node  # it may refer to `env`, which may come later
        else:
            attribute, parse = parsers[key]
            fields[attribute] = parse(value_node, key)
    if "commands" not in fields:
        _fail(root, "commands", "missing; a task needs at least one command")
    if auth_node is not None:
        fields["registry_auth"] = _parse_registry_auth(auth_node, "registry_auth", fields.get("env", {}))
    with _at(root):
        return TaskFile(validate_spec(TaskSpec(**fields)), files)


def _top_level_parsers(environ: Mapping[str, str]) -> dict[str, tuple[str, _Parser]]:
    """YAML key -> (TaskSpec field, parser of the value node)."""
    return {
        "type": ("type", _checked(_text, _check_type)),
        "name": ("name", _checked(_text, _check_name)),
        "image": ("image", _checked(_text, _check_image)),
        "commands": ("commands", _parse_commands),
        "env": ("env", lambda node, path: _parse_env(node, path, environ)),
        "resources": ("resources", _parse_resources),
        "nodes": ("nodes", _checked(_integer, _check_nodes)),
        "volumes": ("volumes", _parse_volumes),
        "working_dir": ("working_dir", _checked(_text, _check_working_dir)),
        "max_duration": ("max_duration_s", _checked(_parse_max_duration, _check_max_duration)),
        "priority": ("priority", _checked(_integer, _check_priority)),
        "fleets": ("fleets", _parse_fleets),
        "stop_duration": ("stop_duration_s", _checked(_parse_stop_duration, _check_stop_duration)),
        "privileged": ("privileged", _parse_bool),
    }


def _checked(parse: _Parser, check: Callable[[Any], None]) -> _Parser:
    """A parser that also runs `check` on the value, reporting failures at the value's line."""

    def parse_and_check(node: yaml.Node, path: str) -> Any:
        value = parse(node, path)
        with _at(node):
            check(value)
        return value

    return parse_and_check


def _parse_commands(node: yaml.Node, path: str) -> tuple[str, ...]:
    return _parse_text_list(node, path, _check_command, _check_commands)


def _parse_fleets(node: yaml.Node, path: str) -> tuple[str, ...]:
    return _parse_text_list(node, path, _check_fleet, _check_fleets)


def _parse_text_list(
    node: yaml.Node,
    path: str,
    check_item: Callable[[int, str], None],
    check_all: Callable[[tuple[str, ...]], None],
) -> tuple[str, ...]:
    """A list of strings (or one string), each checked at its own line, then the whole at the list's line."""
    texts = []
    for index, item in enumerate(_items(node, path)):
        text = _text(item, f"{path}[{index}]")
        with _at(item):
            check_item(index, text)
        texts.append(text)
    with _at(node):
        check_all(tuple(texts))
    return tuple(texts)


def _parse_env(node: yaml.Node, path: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`env` as a list of `NAME=value` / `NAME`, or a mapping `NAME: value` (null value: like bare `NAME`)."""
    entries: list[tuple[str, str | None, yaml.Node]]
    if isinstance(node, yaml.MappingNode):
        entries = [
            (key, None if _is_null(value) else _text(value, _child(path, key)), value)
            for key, value in _fields(node, path, None)
        ]
    elif isinstance(node, yaml.SequenceNode):
        entries = []
        for index, item in enumerate(node.value):
            key, has_value, text = _text(item, f"{path}[{index}]").partition("=")
            entries.append((key, text if has_value else None, item))
    else:
        _fail(node, path, f"expected a list of NAME=value or a mapping, got {_describe(node)}")
    env: dict[str, str] = {}
    for key, value, at in entries:
        env[key] = _env_value(key, value, at, env, environ)
    with _at(node):
        _check_env(env)
    return env


def _env_value(
    key: str, value: str | None, at: yaml.Node, env: dict[str, str], environ: Mapping[str, str]
) -> str:
    """The checked value of one env entry; a None value is looked up in `environ`."""
    path = _child("env", key)
    with _at(at):
        _check_env_key(key)
    if key in env:
        _fail(at, path, "duplicate variable")
    found = value if value is not None else environ.get(key)
    if found is None:
        _fail(at, path, f"not set in the environment; set it, or write {key}=value")
    with _at(at):
        _check_env_entry(key, found)
    return found


def _parse_registry_auth(node: yaml.Node, path: str, env: Mapping[str, str]) -> RegistryAuth:
    """`{username, password}`; each may use `${{ env.NAME }}` for a value of the task's `env` (where a bare
    `NAME` takes it from the submitter's environment), so that the secret need not be in the file."""
    fields = dict(_fields(node, path, ("username", "password")))
    values = {}
    for key in ("username", "password"):
        at, key_path = fields.get(key), _child(path, key)
        if at is None:
            _fail(node, key_path, "missing; registry_auth needs a username and a password")
        values[key] = _interpolate(_text(at, key_path), at, key_path, env)
        with _at(at):
            _check_credential(key_path, values[key])
    return RegistryAuth(**values)


def _interpolate(text: str, node: yaml.Node, path: str, env: Mapping[str, str]) -> str:
    """Replace each `${{ env.NAME }}` in `text` with `env[NAME]`; keep each `${{ secrets.NAME }}` as it is."""

    def value(match: re.Match[str]) -> str:
        context, dot, name = match.group(1).partition(".")
        if context == "env" and dot and name in env:
            return env[name]
        if context == "env" and dot:
            _fail(
                node,
                path,
                f"{match.group(0)}: {name!r} is not in env; add it there (a bare {name} takes "
                "it from your environment)",
            )
        if context == "secrets" and dot:
            return match.group(0)  # kept as written: the coordinator resolves it only for the agent
        _fail(
            node,
            path,
            f"{_quote(match.group(0))}: only ${{{{ env.NAME }}}} or ${{{{ secrets.NAME }}}} can be used here",
        )

    return _INTERPOLATION_RE.sub(value, text)


def _parse_volumes(node: yaml.Node, path: str) -> tuple[str, ...]:
    volumes = []
    for index, item in enumerate(_items(node, path)):
        item_path = f"{path}[{index}]"
        volume = (
            _volume_mapping(item, item_path) if isinstance(item, yaml.MappingNode) else _text(item, item_path)
        )
        with _at(item):
            _check_volume(index, volume)
        volumes.append(volume)
    with _at(node):
        _check_volumes(tuple(volumes))
    return tuple(volumes)


def _volume_mapping(node: yaml.Node, path: str) -> str:
    """dstack's `{instance_path: /host, path: /container, optional: true}` (or `name:` for a named volume),
    normalized to "host:container"; `optional` is ignored."""
    fields = dict(_fields(node, path, ("instance_path", "name", "path", "optional")))
    sources = [key for key in ("instance_path", "name") if key in fields]
    if len(sources) != 1 or "path" not in fields:
        _fail(node, path, "expected a mapping with path and one of instance_path or name")
    source = _text(fields[sources[0]], f"{path}.{sources[0]}")
    return f"{source}:{_text(fields['path'], f'{path}.path')}"


def _parse_files(node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
    """dstack's `files`: `local`, `local:path`, or `{local_path, path}`; each becomes (local, path relative
    to the working directory). Without a path, a relative local path lands at the same relative place and
    any other (absolute, `~`, `..`) at its base name."""
    pairs = []
    items = _items(node, path)
    if len(items) > MAX_LIST_ITEMS:
        _fail(node, path, f"too many entries: {len(items)}, at most {MAX_LIST_ITEMS}")
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        if isinstance(item, yaml.MappingNode):
            fields = dict(_fields(item, item_path, ("local_path", "path")))
            if "local_path" not in fields:
                _fail(item, item_path, "expected a mapping with local_path and optionally path")
            local = _text(fields["local_path"], f"{item_path}.local_path")
            remote = _text(fields["path"], f"{item_path}.path") if "path" in fields else None
        else:
            local, colon, after = _text(item, item_path).partition(":")
            remote = after if colon else None
        with _at(item):
            pairs.append(_file_pair(item_path, local, remote))
    return tuple(pairs)


def _file_pair(path: str, local: str, remote: str | None) -> tuple[str, str]:
    """(local, normalized path relative to the working directory); raises SpecError without a line."""
    _check_text(path, local, MAX_PATH_BYTES, allow_empty=False)
    if remote is None:
        normal = posixpath.normpath(local)
        inside = not normal.startswith(("/", "~")) and normal != ".." and not normal.startswith("../")
        remote = normal if inside else posixpath.basename(normal.rstrip("/")) or normal
    _check_text(path, remote, MAX_PATH_BYTES, allow_empty=False)
    normal = posixpath.normpath(remote)
    if normal == WORKFLOW_DIR or normal.startswith(WORKFLOW_DIR + "/"):
        normal = posixpath.relpath(normal, WORKFLOW_DIR)
    if normal.startswith("/"):
        raise SpecError(
            path,
            f"the path must be relative to the working directory (or under {WORKFLOW_DIR}), got {_quote(remote)}",
        )
    if normal == ".." or normal.startswith("../"):
        raise SpecError(path, f"the path must stay inside the working directory, got {_quote(remote)}")
    return local, normal


def _parse_max_duration(node: yaml.Node, path: str) -> int | None:
    """A duration in seconds, or None for `off` / `false`."""
    value = _scalar_value(node, path)
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    try:
        return parse_duration_s(value)
    except ValueError:
        _fail(node, path, f"expected {_DURATION_EXPECTED}, got {_describe(node)}")


def _parse_stop_duration(node: yaml.Node, path: str) -> int:
    """The grace period between SIGTERM and SIGKILL, in seconds (`0` kills at once)."""
    value = _scalar_value(node, path)
    try:
        return parse_duration_s(value)
    except ValueError:
        _fail(node, path, f"expected a duration like 30s or 5m, got {_describe(node)}")


def _parse_bool(node: yaml.Node, path: str) -> bool:
    value = _scalar_value(node, path)
    if not isinstance(value, bool):
        _fail(node, path, f"expected true or false, got {_describe(node)}")
    return value


# --- resources -----------------------------------------------------------------------------------------------


def _parse_resources(node: yaml.Node, path: str) -> Resources:
    parsers: dict[str, tuple[str, _Parser]] = {
        "gpu": ("gpu", _parse_gpu_node),
        "cpu": ("cpu", _parse_cpu),
        "memory": ("memory_mib", _size_range_parser(_check_memory)),
        "disk": ("disk_mib", _parse_disk),
        "shm_size": ("shm_size_mib", _checked(_parse_size, _check_shm_size)),
    }
    fields: dict[str, Any] = {}
    for key, value_node in _fields(node, path, parsers.keys()):
        if not _is_null(value_node):
            attribute, parse = parsers[key]
            fields[attribute] = parse(value_node, f"{path}.{key}")
    return Resources(**fields)


def _range_text(node: yaml.Node, path: str, parse_side: Callable[[str], float], expected: str) -> Range:
    """A scalar `8`, `2..8`, `2..` or `..8`; each side parsed by `parse_side` (which raises ValueError)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL_TAG, _BOOL_TAG):
        _fail(node, path, f"expected {expected}, got {_describe(node)}")
    try:
        return _parse_range(node.value, parse_side)
    except ValueError:
        _fail(node, path, f"expected {expected}, got {_describe(node)}")


def _parse_range(text: str, parse_side: Callable[[str], float]) -> Range:
    """`8` -> Range(8, 8); `2..8`, `2..`, `..8` -> the inclusive range; ValueError when malformed."""
    if ".." not in text:
        value = parse_side(text.strip())
        return Range(value, value)
    low, _, high = (side.strip() for side in text.partition(".."))
    if not low and not high:
        raise ValueError(f"expected a range like 2..8, 2.. or ..8, got {text!r}")
    return Range(parse_side(low) if low else None, parse_side(high) if high else None)


def _parse_int(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,18}", text, re.ASCII):
        raise ValueError(f"expected an integer, got {text!r}")
    return int(text)


def _parse_number(text: str) -> int | float:
    if not _NUMBER_RE.fullmatch(text) or len(text) > 32:
        raise ValueError(f"expected a number, got {text!r}")
    number = float(text)
    return int(number) if number.is_integer() else number


def _parse_cpu(node: yaml.Node, path: str) -> Range:
    """`cpu: 8`, `cpu: 2..8`, or dstack's `{count: 8.., arch: x86}` (arch is ignored)."""
    at, count_path = node, path
    if isinstance(node, yaml.MappingNode):
        fields = dict(_fields(node, path, ("count", "arch")))
        if "count" not in fields:
            _fail(node, path, "expected a mapping with count")
        at, count_path = fields["count"], f"{path}.count"
    cpu = _range_text(at, count_path, _parse_number, _CPU_EXPECTED)
    with _at(at):
        _check_range(count_path, cpu)
    return cpu


def _size_range_parser(check: Callable[[Range], None]) -> _Parser:
    def parse_size_range(node: yaml.Node, path: str) -> Range:
        size_mib = _range_text(node, path, parse_memory_mib, _SIZE_RANGE_EXPECTED)
        with _at(node):
            check(size_mib)
        return size_mib

    return parse_size_range


def _parse_disk(node: yaml.Node, path: str) -> Range:
    """`disk: 100GB..` or dstack's `{size: 100GB..}`."""
    if isinstance(node, yaml.MappingNode):
        fields = dict(_fields(node, path, ("size",)))
        if "size" not in fields:
            _fail(node, path, "expected a mapping with size")
        return _size_range_parser(_check_disk)(fields["size"], f"{path}.size")
    return _size_range_parser(_check_disk)(node, path)


def _parse_size(node: yaml.Node, path: str) -> int:
    """A single size such as `16GB` (a bare number means GB), in MiB."""
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL_TAG, _BOOL_TAG):
        _fail(node, path, f"expected {_SIZE_EXPECTED}, got {_describe(node)}")
    try:
        return parse_memory_mib(node.value)
    except ValueError:
        _fail(node, path, f"expected {_SIZE_EXPECTED}, got {_describe(node)}")


def _parse_gpu_node(node: yaml.Node, path: str) -> GpuRequest | None:
    """`gpu:` as dstack's string (see `parse_gpu`), an integer count, or a mapping; None for 0 GPUs."""
    if isinstance(node, yaml.MappingNode):
        gpu = _gpu_mapping(node, path)
        with _at(node):
            _check_gpu(gpu, path)
        return None if gpu.count.max == 0 else gpu
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL_TAG, _BOOL_TAG):
        _fail(node, path, f"expected a GPU spec like H100:2 or 24GB..:1..8, got {_describe(node)}")
    try:
        return parse_gpu(node.value)
    except ValueError as error:
        _fail(node, path, str(error))


def _gpu_mapping(node: yaml.Node, path: str) -> GpuRequest:
    """dstack's `{name: [H100, A100], vendor: nvidia, memory: 40GB.., count: 2}` (total_memory is ignored),
    and the DRA-style `compute_capability: 8.0..`, which implies vendor nvidia."""
    parts: dict[str, Any] = {}
    keys = ("name", "vendor", "memory", "count", "total_memory", "compute_capability")
    for key, value in _fields(node, path, keys):
        sub_path = f"{path}.{key}"
        if key == "total_memory" or _is_null(value):
            continue
        if key == "name":
            parts["names"] = tuple(_gpu_names(value, sub_path))
        elif key == "vendor":
            parts["vendor"] = _gpu_vendor_text(_text(value, sub_path), value, sub_path)
        elif key == "memory":
            parts["memory_mib"] = _range_text(value, sub_path, parse_memory_mib, _SIZE_RANGE_EXPECTED)
        elif key == "compute_capability":
            parts["compute_capability"] = _range_text(
                value, sub_path, _parse_capability, _CAPABILITY_EXPECTED
            )
        else:
            parts["count"] = _range_text(value, sub_path, _parse_int, _COUNT_EXPECTED)
    try:
        parts["vendor"] = _gpu_vendor(parts.get("vendor"), parts.get("names", ()))
    except ValueError as error:
        _fail(node, path, str(error))
    if "compute_capability" in parts and parts["vendor"] is None:
        parts["vendor"] = "nvidia"
    return GpuRequest(**parts)


def _parse_capability(text: str) -> float:
    """`"8.6"` → 8.6, `"9"` → 9.0; ValueError unless it is `MAJOR[.MINOR]` with a one-digit minor."""
    if not _CAPABILITY_RE.fullmatch(text):
        raise ValueError(f"expected a compute capability, got {text!r}")
    return float(text)


def _gpu_names(node: yaml.Node, path: str) -> Iterator[str]:
    """GPU names from a list or a single (possibly comma-separated) string."""
    for index, item in enumerate(_items(node, path)):
        for name in _text(item, f"{path}[{index}]").split(","):
            try:
                yield _gpu_name(name.strip())
            except ValueError as error:
                _fail(item, path, str(error))


def _gpu_vendor_text(text: str, node: yaml.Node, path: str) -> str:
    vendor = text.strip().lower()
    if vendor in _UNSUPPORTED_GPU_VENDORS:
        _fail(node, path, "TPUs are not supported; use nvidia, amd or intel GPUs")
    if vendor not in GPU_VENDORS:
        _fail(node, path, f"expected one of {', '.join(GPU_VENDORS)}, got {_quote(text)}")
    return vendor


def _gpu_token(token: str, text: str) -> tuple[str, Any]:
    """Classify one colon-separated part of a gpu string as (kind, value); ValueError if it is none of them."""
    if not token:
        raise ValueError(f"empty part in {_quote(text)}; expected parts like nvidia:H100:80GB:2")
    lowered = token.lower()
    if lowered in GPU_VENDORS:
        return "vendor", lowered
    if lowered in _UNSUPPORTED_GPU_VENDORS:
        raise ValueError("TPUs are not supported; use nvidia, amd or intel GPUs")
    if _COUNT_TOKEN_RE.fullmatch(token):
        try:
            return "count", _parse_range(token, _parse_int)
        except ValueError:
            raise ValueError(f"expected {_COUNT_EXPECTED}, got {_quote(token)} in {_quote(text)}") from None
    if token[:1] in set("0123456789.+-") and any(c.isalpha() for c in token):
        try:
            return "memory", _parse_range(token, parse_memory_mib)
        except ValueError:
            raise ValueError(f"expected GPU memory like 80GB or 24GB..40GB, got {_quote(token)}") from None
    return "names", tuple(_gpu_name(name.strip()) for name in token.split(","))


def _gpu_name(name: str) -> str:
    """A GPU model name as written; ValueError for TPUs and for text that is not a name."""
    if _TPU_NAME_RE.fullmatch(name) or name.lower().startswith("tpu"):
        raise ValueError(f"{_quote(name)}: TPUs are not supported; use nvidia, amd or intel GPUs")
    if not GPU_NAME_RE.fullmatch(name):
        raise ValueError(
            f"unrecognized part {_quote(name)}; expected a vendor (nvidia, amd, intel), GPU names like "
            "A10G,A100, memory like 80GB or 24GB..40GB, or a count like 2 or 1..8"
        )
    return name


def _known_gpu_vendor(name: str) -> str | None:
    """The vendor of a well-known GPU model (case-insensitive), else None."""
    lowered = name.lower()
    vendor = _KNOWN_GPU_VENDOR.get(lowered) or _KNOWN_GPU_VENDOR.get(lowered.split("-")[0])
    if vendor is None and lowered.startswith("rtx"):
        return "nvidia"
    if vendor is None and lowered.startswith("gaudi"):
        return "intel"
    if vendor is None and re.match(r"mi\d", lowered):
        return "amd"
    return vendor


def _gpu_vendor(vendor: str | None, names: tuple[str, ...]) -> str | None:
    """The explicit vendor (ValueError if a well-known name contradicts it), else the vendor that every name
    is known to have, else None."""
    known = [_known_gpu_vendor(name) for name in names]
    if vendor is not None:
        for name, name_vendor in zip(names, known, strict=True):
            if name_vendor is not None and name_vendor != vendor:
                raise ValueError(f"{name} is made by {name_vendor}, not {vendor}")
        return vendor
    if known and None not in known and len(set(known)) == 1:
        return known[0]
    return None


# --- checks: raise SpecError(field, message) without a line; shared by parse_spec and validate_spec ----------


def _check_text(path: str, value: str, max_bytes: int, *, allow_empty: bool = True) -> None:
    """Valid UTF-8, no NUL, at most `max_bytes` bytes, and not empty unless `allow_empty`."""
    try:
        size_bytes = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SpecError(path, "contains characters that cannot be encoded as UTF-8") from None
    if "\x00" in value:
        raise SpecError(path, "must not contain NUL characters")
    if size_bytes > max_bytes:
        raise SpecError(path, f"too long: {size_bytes} bytes, at most {max_bytes}")
    if not allow_empty and not value.strip():
        raise SpecError(path, "must not be empty")


def _check_count(path: str, items: tuple[Any, ...] | dict[str, str], max_items: int) -> None:
    if len(items) > max_items:
        raise SpecError(path, f"too many entries: {len(items)}, at most {max_items}")


def _check_type(value: str) -> None:
    if value != "task":
        raise SpecError("type", f"only 'task' is supported, got {_quote(value)}")


def _check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise SpecError(
            "name",
            f"expected lowercase letters, digits and '-', starting with a letter, at most 60 characters, "
            f"got {_quote(name)}",
        )


def _check_image(image: str) -> None:
    _check_text("image", image, MAX_IMAGE_CHARS, allow_empty=False)
    if len(image) > MAX_IMAGE_CHARS:
        raise SpecError("image", f"too long: {len(image)} characters, at most {MAX_IMAGE_CHARS}")
    if any(c.isspace() for c in image):
        raise SpecError("image", f"must not contain whitespace, got {_quote(image)}")


def _check_command(index: int, command: str) -> None:
    _check_text(f"commands[{index}]", command, MAX_COMMAND_BYTES)


def _check_commands(commands: tuple[str, ...]) -> None:
    if not commands:
        raise SpecError("commands", "must not be empty; a task needs at least one command")
    _check_count("commands", commands, MAX_LIST_ITEMS)
    for index, command in enumerate(commands):
        _check_command(index, command)


def _check_env_key(key: str) -> None:
    if not ENV_KEY_RE.fullmatch(key) or len(key) > 256:
        raise SpecError(
            _child("env", key),
            "invalid variable name; expected letters, digits and '_', not starting with a digit",
        )


def _check_env_entry(key: str, value: str) -> None:
    _check_env_key(key)
    _check_text(_child("env", key), value, MAX_ENV_VALUE_BYTES)


def _check_env(env: dict[str, str]) -> None:
    _check_count("env", env, MAX_ENV_ENTRIES)
    for key, value in env.items():
        _check_env_entry(key, value)


def _check_nodes(nodes: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise SpecError("nodes", f"must be between 1 and {MAX_NODES}, got {nodes}")
    if nodes > 1:  # refused rather than silently run on one node
        raise SpecError("nodes", f"multi-node jobs are not supported yet, got {nodes}; use nodes: 1")


def _check_volume(index: int, volume: str) -> None:
    path = f"volumes[{index}]"
    _check_text(path, volume, 2 * MAX_PATH_BYTES + 1)
    parts = volume.split(":")
    if len(parts) != 2 or not all(part.strip() for part in parts):
        raise SpecError(path, f"expected /host/path:/container/path, got {_quote(volume)}")
    if not parts[1].startswith("/"):
        raise SpecError(path, f"the container path must be absolute, got {_quote(parts[1])}")


def _check_volumes(volumes: tuple[str, ...]) -> None:
    _check_count("volumes", volumes, MAX_LIST_ITEMS)
    for index, volume in enumerate(volumes):
        _check_volume(index, volume)


def _check_working_dir(working_dir: str) -> None:
    _check_text("working_dir", working_dir, MAX_PATH_BYTES, allow_empty=False)


def _check_files_archive(archive: str | None) -> None:
    if archive is not None and not _ARCHIVE_ID_RE.fullmatch(archive):
        raise SpecError(
            "files", f"the archive id must be 64 lowercase hex digits (a sha256), got {_quote(archive)}"
        )


def _check_registry_auth(auth: RegistryAuth | None, image: str | None) -> None:
    if auth is None:
        return
    if image is None:
        raise SpecError(
            "registry_auth", "only a job with an image pulls one; add image or drop registry_auth"
        )
    _check_credential("registry_auth.username", auth.username)
    _check_credential("registry_auth.password", auth.password)


def _check_credential(path: str, value: str) -> None:
    _check_text(path, value, MAX_CREDENTIAL_BYTES, allow_empty=False)


def _check_max_duration(max_duration_s: int | None) -> None:
    if max_duration_s is not None and not 1 <= max_duration_s <= MAX_DURATION_S:
        raise SpecError("max_duration", f"must be between 1s and 10 years, or off, got {max_duration_s}s")


def _check_stop_duration(stop_duration_s: int | None) -> None:
    if stop_duration_s is not None and not 0 <= stop_duration_s <= MAX_STOP_DURATION_S:
        raise SpecError("stop_duration", f"must be between 0s and 1h, got {stop_duration_s}s")


def _check_priority(priority: int) -> None:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise SpecError("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}")


def _check_fleet(index: int, fleet: str) -> None:
    _check_text(f"fleets[{index}]", fleet, MAX_PATH_BYTES, allow_empty=False)


def _check_fleets(fleets: tuple[str, ...]) -> None:
    _check_count("fleets", fleets, MAX_LIST_ITEMS)
    for index, fleet in enumerate(fleets):
        _check_fleet(index, fleet)


def _check_resources(resources: Resources) -> None:
    if resources.gpu is not None:
        _check_gpu(resources.gpu, "resources.gpu")
    if resources.cpu is not None:
        _check_range("resources.cpu", resources.cpu)
    if resources.memory_mib is not None:
        _check_memory(resources.memory_mib)
    if resources.disk_mib is not None:
        _check_disk(resources.disk_mib)
    if resources.shm_size_mib is not None:
        _check_shm_size(resources.shm_size_mib)


def _check_memory(memory_mib: Range) -> None:
    _check_range("resources.memory", memory_mib, show=_show_mib)


def _check_disk(disk_mib: Range) -> None:
    _check_range("resources.disk", disk_mib, show=_show_mib)


def _check_shm_size(shm_size_mib: int) -> None:
    if not 0 <= shm_size_mib <= MAX_RANGE_VALUE:
        raise SpecError(
            "resources.shm_size", f"must be between 0 and {MAX_RANGE_VALUE} MiB, got {shm_size_mib}"
        )


def _check_gpu(gpu: GpuRequest, path: str) -> None:
    if gpu.vendor is not None and gpu.vendor not in GPU_VENDORS:
        raise SpecError(path, f"vendor must be one of {', '.join(GPU_VENDORS)}, got {_quote(gpu.vendor)}")
    _check_count(path, gpu.names, MAX_GPU_NAMES)
    try:
        for name in gpu.names:
            _gpu_name(name)
        _gpu_vendor(gpu.vendor, gpu.names)
    except ValueError as error:
        raise SpecError(path, str(error)) from None
    _check_range(path, gpu.count, what="count ", whole=True)
    if gpu.memory_mib is not None:
        _check_range(path, gpu.memory_mib, what="memory ", show=_show_mib)
    if gpu.compute_capability is not None:
        _check_capability(gpu, path)


def _check_capability(gpu: GpuRequest, path: str) -> None:
    assert gpu.compute_capability is not None
    if gpu.vendor not in (None, "nvidia"):
        raise SpecError(path, f"compute_capability applies to NVIDIA GPUs only, not {gpu.vendor}")
    _check_range(path, gpu.compute_capability, what="compute_capability ", show=lambda v: f"{v:.1f}")
    for side in (gpu.compute_capability.min, gpu.compute_capability.max):
        if side is not None and side > MAX_COMPUTE_CAPABILITY:
            raise SpecError(
                path, f"compute_capability must be at most {MAX_COMPUTE_CAPABILITY}, got {side:.1f}"
            )


def _check_range(
    path: str,
    bounds: Range,
    *,
    what: str = "",
    show: Callable[[float], str] | None = None,
    whole: bool = False,
) -> None:
    """Both sides finite, non-negative, at most MAX_RANGE_VALUE (whole numbers if `whole`), and min <= max.
    `what` prefixes the message ("count "); `show` formats a side for it."""
    show = show or _show_number
    for value in (bounds.min, bounds.max):
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(path, f"{what}must be a finite number")
        if value < 0:
            raise SpecError(path, f"{what}must not be negative, got {_show_range(bounds, _show_number)}")
        if value > MAX_RANGE_VALUE:
            raise SpecError(path, f"{what}too large (at most {MAX_RANGE_VALUE})")
        if whole and value != int(value):
            raise SpecError(path, f"{what}must be a whole number, got {_show_range(bounds, _show_number)}")
    if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
        raise SpecError(path, f"{what}range {_show_range(bounds, show)} is empty: min is greater than max")


def _show_range(bounds: Range, show: Callable[[float], str]) -> str:
    if bounds.min is not None and bounds.min == bounds.max:
        return show(bounds.min)
    low = "" if bounds.min is None else show(bounds.min)
    high = "" if bounds.max is None else show(bounds.max)
    return f"{low}..{high}"


def _show_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _show_mib(value: float) -> str:
    return format_mib(int(value)) if value >= 0 and value == int(value) else f"{value}MB"
