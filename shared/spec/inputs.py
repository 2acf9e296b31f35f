"""What a task brings along besides its files: its environment and its registry credentials."""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from shared.spec.checks import _check_credential, _check_env, _check_env_entry, _check_env_key
from shared.spec.limits import _INTERPOLATION_RE
from shared.spec.model import RegistryAuth
from shared.spec.nodes import _at, _child, _describe, _fail, _fields, _is_null, _quote, _text


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
