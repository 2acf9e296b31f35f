"""The task file as a whole: parse its YAML, walk the top-level fields, validate the result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml

from shared.spec.checks import (
    _check_command,
    _check_commands,
    _check_fleet,
    _check_fleets,
    _check_image,
    _check_max_duration,
    _check_name,
    _check_nodes,
    _check_priority,
    _check_stop_duration,
    _check_type,
    _check_volume,
    _check_volumes,
    _check_working_dir,
    validate_spec,
)
from shared.spec.inputs import _parse_env, _parse_files, _parse_registry_auth
from shared.spec.limits import _DURATION_EXPECTED, IGNORED_FIELDS
from shared.spec.model import SpecError, TaskFile, TaskSpec
from shared.spec.nodes import (
    _at,
    _checked,
    _compose,
    _describe,
    _fail,
    _fields,
    _integer,
    _is_null,
    _items,
    _Parser,
    _scalar_value,
    _text,
)
from shared.spec.resources import _parse_resources
from shared.units import parse_duration_s


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
