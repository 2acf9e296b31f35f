"""dstack's `ports:` of a task: the job's ports that `gpuctl port-forward` (and later `attach`) forwards.

An item is `PORT` (an integer or a string: forwarded from the same local port), `LOCAL:PORT` (from that local
port) or `*:PORT` (from any free local port), as dstack reads them. Both the parser and `validate_spec` check them with `_check_ports`.
"""

from __future__ import annotations

import re

import yaml

from shared.spec.checks import _check_count
from shared.spec.limits import MAX_LIST_ITEMS
from shared.spec.model import PortMapping, SpecError
from shared.spec.nodes import _at, _items, _scalar_value

_PORT_RE = re.compile(r"(?:(\d{1,5}|\*):)?(\d{1,5})")
_EXPECTED = "expected PORT, LOCAL:PORT or *:PORT, with ports between 1 and 65535"


def _parse_ports(node: yaml.Node, path: str) -> tuple[PortMapping, ...]:
    ports = []
    for index, item in enumerate(_items(node, path)):
        with _at(item):
            ports.append(_port_mapping(_scalar_value(item, f"{path}[{index}]"), index))
    with _at(node):
        _check_ports(tuple(ports))
    return tuple(ports)


def _port_mapping(value: object, index: int) -> PortMapping:
    match = _PORT_RE.fullmatch(str(value)) if isinstance(value, int | str) and value is not True else None
    ports = [int(p) for p in match.groups() if p not in (None, "*")] if match else [0]
    if match is None or not all(1 <= p <= 65535 for p in ports):
        raise SpecError(f"ports[{index}]", f"{_EXPECTED}; got {value!r}")
    local, remote = match.groups()
    if local == "*":
        return PortMapping(int(remote))
    return PortMapping(int(remote), int(local or remote))


def _check_port(index: int, mapping: PortMapping) -> None:
    local = mapping.local_port
    if not 1 <= mapping.port <= 65535 or local is not None and not 1 <= local <= 65535:
        written = str(mapping.port) if local is None else f"{local}:{mapping.port}"
        raise SpecError(f"ports[{index}]", f"{_EXPECTED}; got {written!r}")


def _check_ports(ports: tuple[PortMapping, ...]) -> None:
    _check_count("ports", ports, MAX_LIST_ITEMS)
    seen: set[int] = set()
    for index, mapping in enumerate(ports):
        _check_port(index, mapping)
        if mapping.local_port is not None and mapping.local_port in seen:
            raise SpecError(f"ports[{index}]", f"local port {mapping.local_port} is forwarded twice")
        if mapping.local_port is not None:
            seen.add(mapping.local_port)
