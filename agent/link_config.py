"""The `bastion:` and `proxy:` settings of agent.yaml (and their flags): how the agent reaches the coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.tunnel import Hop, HopError, parse_hop

HOP_FIELDS = {"host", "user", "port", "identity_file", "known_hosts"}


class LinkConfigError(ValueError):
    """One line naming the field."""


def parse_bastion(raw: Any, identity_file: Any = None, known_hosts: Any = None) -> tuple[Hop, ...]:
    """`bastion:` as one hop or a list of hops (first hop first); each hop a `[USER@]HOST[:PORT]` string or a
    mapping of HOP_FIELDS. `identity_file` / `known_hosts` (the flags) fill in what a hop leaves out. Every hop
    needs a known_hosts file: host keys are always checked. Raises LinkConfigError naming the field."""
    if raw is None or raw == [] or raw == "":
        return ()
    items = raw if isinstance(raw, list | tuple) else [raw]
    return tuple(
        _hop(item, f"bastion[{i}]" if len(items) > 1 else "bastion", identity_file, known_hosts)
        for i, item in enumerate(items)
    )


def _hop(item: Any, field: str, identity_file: Any, known_hosts: Any) -> Hop:
    try:
        if isinstance(item, str):
            hop = parse_hop(item, field)
            fields: dict[str, Any] = {}
        elif isinstance(item, dict):
            unknown = set(item) - HOP_FIELDS
            if unknown:
                raise LinkConfigError(
                    f"{field}.{sorted(unknown)[0]}: unknown setting (known: {', '.join(sorted(HOP_FIELDS))})"
                )
            if not isinstance(item.get("host"), str) or not item["host"]:
                raise LinkConfigError(f"{field}.host: required (the bastion's name or address)")
            hop = parse_hop(item["host"], f"{field}.host")
            fields = item
        else:
            raise LinkConfigError(
                f"{field}: expected [USER@]HOST[:PORT] or a mapping with host, user, port, ..."
            )
    except HopError as exc:
        raise LinkConfigError(str(exc)) from None
    port = fields.get("port", hop.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise LinkConfigError(f"{field}.port: expected a port number, got {port!r}")
    user = fields.get("user", hop.user)
    if user is not None and (not isinstance(user, str) or not user or any(c.isspace() for c in user)):
        raise LinkConfigError(f"{field}.user: expected a user name, got {user!r}")
    identity = fields.get("identity_file") or identity_file
    known = fields.get("known_hosts") or known_hosts
    if not known:
        raise LinkConfigError(
            f"{field}.known_hosts: required (host keys are always checked; --bastion-known-hosts FILE)"
        )
    for name, value in (("identity_file", identity), ("known_hosts", known)):
        if value is not None and (not isinstance(value, str | Path) or any(c in str(value) for c in "\n\r ")):
            raise LinkConfigError(f"{field}.{name}: expected a file path without spaces, got {value!r}")
    return Hop(
        host=hop.host,
        user=user,
        port=port,
        identity_file=Path(identity).absolute() if identity else None,
        known_hosts=Path(known).absolute(),
    )


def parse_proxy(raw: Any) -> str | None:
    """`proxy:` as http://[user:pass@]host:port, or `none` (ignore HTTPS_PROXY); None: from the environment."""
    if raw is None:
        return None
    if raw in ("none", "direct", ""):
        return ""
    text = str(raw)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme != "http" or not parts.hostname or port is None:
        raise LinkConfigError(
            f"proxy: expected http://HOST:PORT (an HTTP CONNECT proxy) or none, got {text!r}"
        )
    return text
