"""dstack's `schedule:`, parsed at its YAML node.

schedule: {cron: "15 23 * * *"}                     # every day at 23:15 UTC
schedule: {cron: ["0 6 * * mon-fri", "0 10 * * sat,sun"]}
"""

from __future__ import annotations

import yaml

from shared.spec.model import Schedule
from shared.spec.nodes import _fail, _fields, _items, _text


def _parse_schedule(node: yaml.Node, path: str) -> Schedule:
    """A mapping with `cron`: one cron line or a list of them (`_check_schedule` checks each line)."""
    fields = dict(_fields(node, path, ("cron",)))
    if "cron" not in fields:
        _fail(node, f"{path}.cron", 'missing; expected a cron line such as "0 3 * * *" (UTC), or a list')
    lines = _items(fields["cron"], f"{path}.cron")
    return Schedule(cron=tuple(_text(item, f"{path}.cron[{index}]") for index, item in enumerate(lines)))
