"""dstack's `groups:` of a multi-node task, parsed at their YAML nodes.

groups:
  - name: head                # optional: a group is named by its position ("0", "1", ...) otherwise
    nodes: 1
    commands: [ray start --head --port=6379 --block]
  - name: workers
    nodes: 2
    commands: [ray start --address=$DSTACK_MASTER_NODE_IP:6379 --block]

Every node of a job takes alike blocks, so a group's `resources` (dstack's per-group field) is taken only when
every group gives the same; it then stands for the task's. A group's `ports` is refused: the task's own `ports:` names them.
"""

from __future__ import annotations

import yaml

from shared.spec.checks import _check_group, _check_group_names
from shared.spec.model import NodeGroup, Resources, SpecError
from shared.spec.nodes import _at, _describe, _fail, _fields, _integer, _is_null, _items, _line, _text
from shared.spec.resources import _parse_resources

_GROUP_FIELDS = ("name", "nodes", "commands", "resources", "ports")
ALIKE_RESOURCES = "must be the same in every group for now (a job's nodes take alike blocks)"
GROUP_PORTS_ADVICE = "not supported yet; declare the job's ports at the top level (ports:)"


def _parse_groups(node: yaml.Node, path: str) -> tuple[tuple[NodeGroup, ...], Resources | None]:
    """The groups, and the resources they give (None when none gives any)."""
    if not isinstance(node, yaml.SequenceNode):
        _fail(node, path, f"expected a list of groups, got {_describe(node)}")
    items = node.value
    if not items:
        _fail(node, path, "must not be empty; remove it, or give each group its nodes and commands")
    groups, resources = [], []
    for index, item in enumerate(items):
        group, given = _parse_group(item, f"{path}[{index}]", index)
        groups.append(group)
        with _at(item):
            _check_group_names(tuple(groups))
        resources.append(given)
    _check_alike(resources, items, path)
    return tuple(groups), resources[0]


def _parse_group(node: yaml.Node, path: str, index: int) -> tuple[NodeGroup, Resources | None]:
    fields = dict(_fields(node, path, _GROUP_FIELDS))
    if "ports" in fields and _items_or_empty(fields["ports"], f"{path}.ports"):
        _fail(fields["ports"], f"{path}.ports", GROUP_PORTS_ADVICE)
    name = _text(fields["name"], f"{path}.name") if "name" in fields else str(index)
    nodes = _integer(fields["nodes"], f"{path}.nodes") if "nodes" in fields else 1
    commands = []
    if "commands" in fields and not _is_null(fields["commands"]):
        items = _items(fields["commands"], f"{path}.commands")
        commands = [_text(item, f"{path}.commands[{n}]") for n, item in enumerate(items)]
    group = NodeGroup(name=name, nodes=nodes, commands=tuple(commands))
    try:
        _check_group(index, group, has_image=True)  # a group without commands is judged with the task
    except SpecError as error:  # at the line of the field it names (`groups[1].nodes`), else the group's
        key = error.field.removeprefix(f"{path}.").split("[")[0]
        raise error.where(_line(fields.get(key, node))) from None
    given = None
    if "resources" in fields and not _is_null(fields["resources"]):
        given = _parse_resources(fields["resources"], f"{path}.resources")
    return group, given


def _items_or_empty(node: yaml.Node, path: str) -> list[yaml.Node]:
    return [] if _is_null(node) else _items(node, path)


def _check_alike(resources: list[Resources | None], items: list[yaml.Node], path: str) -> None:
    """Either no group gives resources, or all give the same."""
    for index, given in enumerate(resources):
        if given != resources[0]:
            raise SpecError(f"{path}[{index}].resources", ALIKE_RESOURCES, _line(items[index]))
