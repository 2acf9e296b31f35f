"""Reading YAML nodes: each helper fails with a one-line `SpecError` at the node's line."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import yaml

from shared.spec.limits import _NULL_TAG
from shared.spec.model import SpecError


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
        if all(e.line is not None for e in error.errors):
            raise
        raise error.where(_line(node)) from None


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
    for key_node, key, value_node in _entries(node, path):
        if known is not None and key not in known:
            _fail(key_node, _child(path, key), _unknown_field_message(key, sorted(known)))
        yield key, value_node


def _entries(node: yaml.Node, path: str) -> Iterator[tuple[yaml.Node, str, yaml.Node]]:
    """(key node, key, value node) of a mapping node, in order; rejects duplicate and non-string keys."""
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
        yield key_node, key, value_node


def _unknown_field_message(key: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(key, known, n=1)
    if matches:
        return f"unknown field; did you mean {matches[0]!r}?"
    if len(known) <= 10:
        return f"unknown field; expected one of {', '.join(known)}"
    return "unknown field"


_Parser = Callable[[yaml.Node, str], Any]


def _checked(parse: _Parser, check: Callable[[Any], None]) -> _Parser:
    """A parser that also runs `check` on the value, reporting failures at the value's line."""

    def parse_and_check(node: yaml.Node, path: str) -> Any:
        value = parse(node, path)
        with _at(node):
            check(value)
        return value

    return parse_and_check
