"""Top-level fields whose value is one scalar or a list: commands, fleets, volumes, durations, flags."""

from __future__ import annotations

from collections.abc import Callable

import yaml

from shared.spec.checks import (
    _check_command,
    _check_commands,
    _check_fleet,
    _check_fleets,
    _check_volume,
    _check_volumes,
)
from shared.spec.limits import _DURATION_EXPECTED
from shared.spec.nodes import _at, _describe, _fail, _fields, _items, _scalar_value, _text
from shared.units import parse_duration_s


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
