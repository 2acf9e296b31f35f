"""dstack's fleet file, as far as a fleet here has settings: `type: fleet`, `name`, `placement: cluster | any`,
and our own `preemption: true | false`.

The rest of a dstack fleet file says which hosts to provision or reach (`ssh_config`, `nodes`, `resources`,
the cloud fields); here a host joins a fleet with a join token, so those fields are accepted and named back
as ignored, and a dstack fleet file applies unchanged. A file is declarative: a setting it leaves out takes
its default (`placement: any`, `preemption: false`).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from shared.spec.model import SpecError
from shared.spec.nodes import (
    _compose,
    _describe,
    _entries,
    _fail,
    _scalar_value,
    _text,
    _unknown_field_message,
)

SETTINGS = ("type", "name", "placement", "preemption")
PLACEMENTS = ("cluster", "any")
HOST_FIELDS = frozenset(  # dstack's fleet fields about hosts
    {
        "ssh_config",
        "nodes",
        "resources",
        "blocks",
        "env",
        "backends",
        "regions",
        "availability_zones",
        "instance_types",
        "reservation",
        "spot_policy",
        "retry",
        "max_price",
        "idle_duration",
        "termination_policy",
        "termination_idle_time",
        "tags",
    }
)


@dataclass(frozen=True)
class FleetFile:
    name: str
    placement: str  # "cluster" or "any"
    preemption: bool
    ignored: tuple[str, ...]  # the dstack fields about hosts it has, in file order


def parse_fleet_file(text: str, *, source: str = "fleet") -> FleetFile:
    """Parse a dstack fleet file. Every problem raises SpecError, one line `<source>:<line>: <field>: <what>`."""
    try:
        return _build(_compose(text))
    except SpecError as error:
        raise error.where(source=source) from None


def _build(root: yaml.Node | None) -> FleetFile:
    if root is None:
        raise SpecError("", "empty file: a fleet file has `type: fleet` and a `name`")
    nodes: dict[str, yaml.Node] = {}
    ignored = []
    for key_node, key, node in _entries(root, ""):
        if key in HOST_FIELDS:
            ignored.append(key)
        elif key in SETTINGS:
            nodes[key] = node
        else:
            _fail(key_node, key, _unknown_field_message(key, sorted(SETTINGS)))
    for key in ("type", "name"):
        if key not in nodes:
            raise SpecError(key, "missing; a fleet file has `type: fleet` and a `name`")
    if _text(nodes["type"], "type") != "fleet":
        _fail(nodes["type"], "type", f"expected 'fleet', got {_describe(nodes['type'])}")
    placement = "any"
    if "placement" in nodes and (placement := _text(nodes["placement"], "placement")) not in PLACEMENTS:
        _fail(
            nodes["placement"], "placement", f"expected cluster or any, got {_describe(nodes['placement'])}"
        )
    preemption = False
    if "preemption" in nodes:
        preemption = _scalar_value(nodes["preemption"], "preemption")
        if not isinstance(preemption, bool):
            _fail(
                nodes["preemption"],
                "preemption",
                f"expected true or false, got {_describe(nodes['preemption'])}",
            )
    return FleetFile(_text(nodes["name"], "name"), placement, preemption, tuple(ignored))
