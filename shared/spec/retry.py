"""dstack's `retry:` and gpuctl's `lost_after:`, parsed at their YAML nodes.

retry: true                                            # every event, for an hour
retry: {on_events: [no-capacity, error, interruption], duration: 1h}
lost_after: 20m                                        # its host may be silent this long before it is lost
"""

from __future__ import annotations

import yaml

from shared.spec.model import DEFAULT_RETRY_DURATION_S, RETRY_EVENTS, RetryPolicy
from shared.spec.nodes import _describe, _fail, _fields, _items, _scalar_value, _text
from shared.units import parse_duration_s


def _parse_retry(node: yaml.Node, path: str) -> RetryPolicy | None:
    """`true` (every event, an hour), `false`, or a mapping of `on_events` (default: every event) and
    `duration` (default: an hour)."""
    if not isinstance(node, yaml.MappingNode):
        value = _scalar_value(node, path)
        if not isinstance(value, bool):
            _fail(
                node,
                path,
                f"expected true, false or {{on_events: [...], duration: 1h}}, got {_describe(node)}",
            )
        return RetryPolicy() if value else None
    fields = dict(_fields(node, path, ("on_events", "duration")))
    events: tuple[str, ...] = RETRY_EVENTS
    if "on_events" in fields:
        events = tuple(
            _text(item, f"{path}.on_events[{index}]")
            for index, item in enumerate(_items(fields["on_events"], f"{path}.on_events"))
        )
    duration_s = DEFAULT_RETRY_DURATION_S
    if "duration" in fields:
        duration_s = _parse_duration(fields["duration"], f"{path}.duration")
    return RetryPolicy(on_events=events, duration_s=duration_s)


def _parse_duration(node: yaml.Node, path: str) -> int:
    try:
        return parse_duration_s(_scalar_value(node, path))
    except ValueError:
        _fail(node, path, f"expected a duration like 30s, 10m or 1h, got {_describe(node)}")
