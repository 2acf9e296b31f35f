"""The task file as a whole: parse its YAML, walk the top-level fields, validate the result.

The walk goes on past a field in error, so that one run of the parser reports every problem it can find
(`SpecError.errors`); rules that tie fields together run only on fields that parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from shared.spec.checks import (
    GROUP_COMMANDS,
    _check_group,
    _check_image,
    _check_lost_after,
    _check_max_duration,
    _check_name,
    _check_nodes,
    _check_priority,
    _check_python,
    _check_retry,
    _check_shell,
    _check_startup_order,
    _check_stop_criteria,
    _check_stop_duration,
    _check_type,
    _check_working_dir,
)
from shared.spec.copies import Copy, _parse_files, _parse_repos
from shared.spec.dev_env import DEV_ENVIRONMENT, DEV_FIELDS, USE_INIT, VERSION_IGNORED, dev_parsers
from shared.spec.fields import REFUSED_ADVICE, REFUSED_DEFAULTS, TASK_FIELD_GROUPS, FieldGroup, warnings
from shared.spec.fields import unknown_field_message as _unknown_top_level
from shared.spec.groups import _parse_groups
from shared.spec.inputs import _parse_env, _parse_registry_auth
from shared.spec.model import Problems, SpecError, TaskFile, TaskSpec
from shared.spec.node_refs import check_node_refs, group_sizes
from shared.spec.nodes import (
    _at,
    _checked,
    _child,
    _compose,
    _entries,
    _fail,
    _integer,
    _is_null,
    _items,
    _line,
    _Parser,
    _scalar_value,
    _text,
)
from shared.spec.ports import _parse_ports
from shared.spec.resources import _parse_resources
from shared.spec.retry import _parse_duration, _parse_retry
from shared.spec.schedule import _parse_schedule
from shared.spec.service import SERVICE_FIELDS, SERVICE_TYPE, parse_service
from shared.spec.validate import NO_WORK, PYTHON_WITH_IMAGE, ROOT_FILES_NEED_IMAGE, validate_spec
from shared.spec.values import (
    _parse_bool,
    _parse_commands,
    _parse_fleets,
    _parse_max_duration,
    _parse_stop_duration,
    _parse_volumes,
)


def parse_spec(text: str, *, source: str = "spec", environ: Mapping[str, str] | None = None) -> TaskSpec:
    """Parse and validate a dstack-compatible task file.

    Every problem raises `SpecError` with a one-line message `<source>:<line>: <field>: <what>`, where
    `<field>` is the dotted path (`resources.gpu`, `env.HF_TOKEN`, `commands[2]`); several problems found
    in one pass come together, one line each. A bare `NAME` in `env` takes its value from `environ`;
    `environ=None` means an empty environment (callers pass `os.environ`). The result has already passed
    `validate_spec`.
    """
    return parse_task(text, source=source, environ=environ).spec


def parse_task(text: str, *, source: str = "spec", environ: Mapping[str, str] | None = None) -> TaskFile:
    """`parse_spec`, keeping what only the CLI needs: the files to pack and the warnings to show (see
    `TaskFile`)."""
    try:
        root = _compose(text)
        return _build_task(root, {} if environ is None else environ)
    except SpecError as error:
        raise error.where(source=source) from None


def _build_task(root: yaml.Node | None, environ: Mapping[str, str]) -> TaskFile:
    """Walk the top-level mapping, parse each field at its node, and validate the whole."""
    if root is None or _is_null(root):
        raise SpecError("", "empty spec; expected a mapping with at least 'commands'", 1)
    problems = Problems()
    dev = _declares_dev(root)
    nodes, service_nodes = _top_level_nodes(root, problems, dev)
    fields = _parse_fields(nodes, environ, problems, dev)
    with problems.collect(), _at(root):
        fields["service"] = parse_service(service_nodes, fields.get("type") == SERVICE_TYPE)
    copies: list[Copy] = []
    if "files" in nodes and not _is_null(nodes["files"]):
        with problems.collect():
            copies += _parse_files(nodes["files"], "files", problems)
    if "repos" in nodes and not _is_null(nodes["repos"]):
        with problems.collect():
            fields["repos"], local_repos = _parse_repos(nodes["repos"], "repos", problems)
            copies += local_repos
    if "groups" in nodes and not _is_null(nodes["groups"]):
        with problems.collect():
            _take_groups(nodes, fields)
    env_failed = "env" in nodes and not _is_null(nodes["env"]) and "env" not in fields
    if "registry_auth" in nodes and not _is_null(nodes["registry_auth"]) and not env_failed:
        with problems.collect():  # after the walk: it may refer to `env`, which may come later
            fields["registry_auth"] = _parse_registry_auth(
                nodes["registry_auth"], "registry_auth", fields.get("env", {})
            )
    _check_together(root, nodes, fields, copies, problems)
    _check_group_commands(nodes, fields, problems)
    _check_node_refs(nodes, fields, problems)
    problems.raise_any()
    with _at(root):
        spec = validate_spec(TaskSpec(**fields))
    files = tuple((c.local, c.target) for c in copies if not c.target.startswith("/"))
    root_files = tuple((c.local, c.target) for c in copies if c.target.startswith("/"))
    ignored = (VERSION_IGNORED,) if "version" in nodes else ()
    return TaskFile(spec, files, root_files, warnings(nodes) + ignored)


def _declares_dev(root: yaml.Node) -> bool:
    """Whether the file says `type: dev-environment` (its own fields are known then)."""
    found = _value_of(root, "type") if isinstance(root, yaml.MappingNode) else None
    return isinstance(found, yaml.ScalarNode) and found.value == DEV_ENVIRONMENT


def _top_level_nodes(
    root: yaml.Node, problems: Problems, dev: bool
) -> tuple[dict[str, yaml.Node], dict[str, yaml.Node]]:
    """The value node of each known top-level field, in order: a task's fields, and a service's; an unknown
    field is a problem, and so are `commands` in a dev environment (it has `init`)."""
    nodes, service_nodes = {}, {}
    with problems.collect():
        for key_node, key, value_node in _entries(root, ""):
            if dev and key == "commands":
                problems.found.append(SpecError("commands", USE_INIT, _line(key_node)))
            elif key in TASK_FIELD_GROUPS or (dev and key in DEV_FIELDS):
                nodes[key] = value_node
            elif key in SERVICE_FIELDS:
                service_nodes[key] = value_node
            else:
                problems.found.append(SpecError(_child("", key), _unknown_top_level(key), _line(key_node)))
    return nodes, service_nodes


def _parse_fields(
    nodes: dict[str, yaml.Node], environ: Mapping[str, str], problems: Problems, dev: bool
) -> dict[str, Any]:
    """TaskSpec fields from the top-level fields that map onto one; refused fields are checked here."""
    parsers: dict[str, tuple[str | None, _Parser]] = {
        **_top_level_parsers(environ),
        **(dev_parsers() if dev else {}),
    }
    fields: dict[str, Any] = {}
    for key, node in nodes.items():
        with problems.collect():
            if TASK_FIELD_GROUPS.get(key) is FieldGroup.REFUSED:
                _check_refused(key, node)
            elif key in parsers and not _is_null(node):
                attribute, parse = parsers[key]
                value = parse(node, key)
                if attribute is not None:
                    fields[attribute] = value
    return fields


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
        "shell": ("shell", _checked(_text, _check_shell)),
        "python": ("python", _checked(_text, _check_python)),
        "retry": ("retry", _checked(_parse_retry, _check_retry)),
        "lost_after": ("lost_after_s", _checked(_parse_duration, _check_lost_after)),
        "schedule": ("schedule", _parse_schedule),
        "ports": ("ports", _parse_ports),
        "startup_order": ("startup_order", _checked(_text, _check_startup_order)),
        "stop_criteria": ("stop_criteria", _checked(_text, _check_stop_criteria)),
    }


def _take_groups(nodes: dict[str, yaml.Node], fields: dict[str, Any]) -> None:
    """`groups` into `fields`: the job's nodes are theirs, added up (dstack has `nodes` or `groups`, never
    both), and the resources they give are the task's."""
    groups, resources = _parse_groups(nodes["groups"], "groups")
    if "nodes" in nodes and not _is_null(nodes["nodes"]):
        _fail(nodes["nodes"], "nodes", "not allowed with groups: each group gives its own nodes; remove it")
    if resources is not None and "resources" in nodes and fields.get("resources", resources) != resources:
        _fail(nodes["resources"], "resources", "differs from the groups' resources; keep one of them")
    fields["groups"] = groups
    fields["nodes"] = sum(group.nodes for group in groups)
    if resources is not None:
        fields["resources"] = resources


def _check_refused(key: str, node: yaml.Node) -> None:
    """A refused field passes only with a value that asks for nothing: null, empty, or its default (false,
    for most)."""
    if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
        if not node.value:
            return
    else:
        value = _scalar_value(node, key)
        if value is None or value is REFUSED_DEFAULTS.get(key, False):  # `is`: 0 is no false here
            return
    _fail(node, key, REFUSED_ADVICE[key])


def _check_group_commands(nodes: dict[str, yaml.Node], fields: dict[str, Any], problems: Problems) -> None:
    """A group without commands runs the task's image's entrypoint: it needs an image, known only now."""
    if problems.found or "groups" not in fields:
        return
    for index, item in enumerate(_items(nodes["groups"], "groups")):
        with problems.collect(), _at(item):
            _check_group(index, fields["groups"][index], has_image="image" in fields)


def _check_node_refs(nodes: dict[str, yaml.Node], fields: dict[str, Any], problems: Problems) -> None:
    """`${{ groups[i].nodes[j].IP_ADDRESS }}` in the task's or a group's commands, each at its line."""
    if problems.found:
        return
    lists = [("commands", nodes.get("commands"))]
    if "groups" in fields:
        for number, group in enumerate(_items(nodes["groups"], "groups")):
            lists.append((f"groups[{number}].commands", _value_of(group, "commands")))
    sizes = group_sizes(fields.get("groups", ()), fields.get("nodes", 1))
    for path, node in lists:
        if node is not None and not _is_null(node):
            for index, item in enumerate(_items(node, path)):
                with problems.collect(), _at(item):
                    check_node_refs(f"{path}[{index}]", _text(item, path), sizes)


def _value_of(mapping: yaml.Node, key: str) -> yaml.Node | None:
    return next((value for _, name, value in _entries(mapping, "") if name == key), None)


def _check_together(
    root: yaml.Node,
    nodes: dict[str, yaml.Node],
    fields: dict[str, Any],
    copies: list[Copy],
    problems: Problems,
) -> None:
    """The rules that tie fields together, at the line of the field to change. They run only when the
    fields they read parsed: a field in error is already reported, and a guess about it would mislead."""
    if problems.found:
        return
    commands = nodes.get("commands")
    if fields.get("commands") and "groups" in fields:
        problems.found.append(SpecError("commands", GROUP_COMMANDS, _line(nodes["commands"])))
    dev = fields.get("type") == DEV_ENVIRONMENT  # it runs init, then stays up: init may be empty
    if not fields.get("commands") and "image" not in fields and "groups" not in fields and not dev:
        if commands is None or _is_null(commands):
            problems.found.append(SpecError("commands", f"missing; {NO_WORK}", _line(root)))
        else:
            problems.found.append(SpecError("commands", f"must not be empty; {NO_WORK}", _line(commands)))
    if "python" in fields and "image" in fields:
        problems.found.append(SpecError("python", PYTHON_WITH_IMAGE, _line(nodes["python"])))
    absolute = [c for c in copies if c.target.startswith("/")]
    if absolute and "image" not in fields and "python" not in fields:
        problems.found.append(SpecError(absolute[0].field, ROOT_FILES_NEED_IMAGE, absolute[0].line))
