"""dstack's service fields (`type: service`): `port`, `replicas`, `auth` and `strip_prefix` act; the rest
of a service's fields are refused with advice unless their value asks for nothing.

`port` is `8000`, or `"80:8000"` (dstack reads only the application's port, the second), as dstack writes
it. `replicas` is a fixed count: `2`, or a range whose ends agree (`2..2`); a range that would scale needs
dstack's `scaling`, which gpuctl does not do. The coordinator serves the service at
`/services/PROJECT/NAME/` (coordinator/api_service.py).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from shared.spec.model import ServiceSpec, SpecError
from shared.spec.nodes import _at, _describe, _fail, _is_null, _scalar_value
from shared.spec.values import _parse_bool

MAX_REPLICAS = 64
SERVICE_TYPE = "service"
_ACTS = ("port", "replicas", "auth", "strip_prefix")
# Why each refused service field is refused; `gateway: false` asks for what gpuctl does (no gateway).
SERVICE_REFUSED = {
    "gateway": "not supported: services are served by the coordinator at /services/PROJECT/NAME/; "
    "remove it or set gateway: false",
    "model": "not supported yet: dstack's model endpoint is not served; remove it (the application's own "
    "OpenAI-compatible API is, at /services/PROJECT/NAME/v1/)",
    "https": "not supported: the coordinator serves every service over its own HTTPS; remove it",
    "scaling": "not supported yet: replicas is a fixed count; remove it",
    "rate_limits": "not supported yet; remove it",
    "probes": "not supported yet: a replica is ready once its port accepts a TCP connection; remove it",
}
SERVICE_FIELDS = (*_ACTS, *SERVICE_REFUSED)
_PORT_RE = re.compile(r"(\d{1,5}):(\d{1,5})")
_REPLICAS_RE = re.compile(r"(\d{1,3})\.\.(\d{1,3})")
_PORT_EXPECTED = 'expected the application\'s port, like 8000 or "80:8000", between 1 and 65535'
_REPLICAS_EXPECTED = f"expected a number of replicas from 1 to {MAX_REPLICAS}, like 2"


def parse_service(nodes: dict[str, yaml.Node], is_service: bool) -> ServiceSpec | None:
    """The service of a file whose top-level service fields are `nodes`; None for a task. A service
    field in a task, a refused one, or a service without `port` raises SpecError naming the field."""
    if not is_service:
        for key, node in nodes.items():
            _fail(node, key, f"belongs to services; add `type: service` (or remove {key})")
        return None
    for key in SERVICE_REFUSED:
        if key in nodes and not _asks_for_nothing(key, nodes[key]):
            _fail(nodes[key], key, SERVICE_REFUSED[key])
    if "port" not in nodes or _is_null(nodes["port"]):
        raise SpecError("port", "missing; a service needs the port its application listens on")
    fields: dict[str, Any] = {"port": _parse_port(nodes["port"])}
    if "replicas" in nodes and not _is_null(nodes["replicas"]):
        fields["replicas"] = _parse_replicas(nodes["replicas"])
    for key in ("auth", "strip_prefix"):
        if key in nodes and not _is_null(nodes[key]):
            fields[key] = _parse_bool(nodes[key], key)
    return ServiceSpec(**fields)


def _asks_for_nothing(key: str, node: yaml.Node) -> bool:
    if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
        return not node.value
    return _scalar_value(node, key) in (None, False)


def _parse_port(node: yaml.Node) -> int:
    value = _scalar_value(node, "port")
    if isinstance(value, str) and (match := _PORT_RE.fullmatch(value)):
        value = int(match[2])
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(node, "port", f"{_PORT_EXPECTED}; got {_describe(node)}")
    with _at(node):
        check_port(value)
    return value


def _parse_replicas(node: yaml.Node) -> int:
    value = _scalar_value(node, "replicas")
    if isinstance(value, str) and (match := _REPLICAS_RE.fullmatch(value)):
        if match[1] != match[2]:
            _fail(
                node,
                "replicas",
                f"a range ({value}) scales with dstack's `scaling`: not supported; "
                "give a fixed count, like 2",
            )
        value = int(match[1])
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(node, "replicas", f"{_REPLICAS_EXPECTED}; got {_describe(node)}")
    with _at(node):
        check_replicas(value)
    return value


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise SpecError("port", f"{_PORT_EXPECTED}; got {port}")


def check_replicas(replicas: int) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise SpecError("replicas", f"{_REPLICAS_EXPECTED}; got {replicas}")


def check_service(spec_type: str, service: ServiceSpec | None, nodes: int, has_schedule: bool) -> None:
    """The rules `validate_spec` keeps for a service: its fields with `type: service` and only then, one
    node per replica, and no schedule (a service runs until stopped)."""
    if (spec_type == SERVICE_TYPE) != (service is not None):
        raise SpecError("port", "a service (type: service) needs a port; a task has none")
    if service is None:
        return
    check_port(service.port)
    check_replicas(service.replicas)
    if nodes != 1:
        raise SpecError("nodes", "a service's replica runs on one node; use replicas for more")
    if has_schedule:
        raise SpecError("schedule", "a service runs until stopped; it cannot be scheduled")
