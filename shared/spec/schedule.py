"""dstack's `schedule:`, parsed at its YAML node.

schedule: {cron: "15 23 * * *"}                     # every day at 23:15 UTC
schedule: {cron: ["0 6 * * mon-fri", "0 10 * * sat,sun"]}
"""

from __future__ import annotations

import yaml

from shared.spec.checks import _check_cron_line, _check_schedule
from shared.spec.model import Schedule
from shared.spec.nodes import _at, _fail, _fields, _items, _text


def _parse_schedule(node: yaml.Node, path: str) -> Schedule:
    """A mapping with `cron`: one cron line or a list of them, each checked at its own line."""
    fields = dict(_fields(node, path, ("cron",)))
    if "cron" not in fields:
        _fail(node, f"{path}.cron", 'missing; expected a cron line such as "0 3 * * *" (UTC), or a list')
    lines = []
    for index, item in enumerate(_items(fields["cron"], f"{path}.cron")):
        lines.append(_text(item, f"{path}.cron[{index}]"))
        with _at(item):
            _check_cron_line(index, lines[-1])
    schedule = Schedule(cron=tuple(lines))
    with _at(fields["cron"]):
        _check_schedule(schedule)  # the list as a whole: not empty, not too long
    return schedule
