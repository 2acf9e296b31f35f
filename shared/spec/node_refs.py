"""dstack's `${{ groups[i].nodes[j].IP_ADDRESS }}` in a multi-node task's commands: the internal IP of node j
of group i (a task with `nodes: N` is one group of N). `groups[0].nodes[0]` is the master. The spec keeps the
text; the coordinator puts the addresses in when it sends each node its commands, once the job is placed.

As in dstack, `$${{ ... }}` is left alone, and any other `${{ groups... }}` is an error: a typo must not reach
the shell, which would fail on it at run time only.
"""

from __future__ import annotations

import re

from shared.spec.model import NodeGroup, SpecError
from shared.spec.nodes import _quote

_ANY_REF = re.compile(r"(?<!\$)\$\{\{\s*([^}]+?)\s*\}\}")
_NODE_IP = re.compile(r"groups\[(\d+)\]\.nodes\[(\d+)\]\.IP_ADDRESS")
_NAMESPACE = re.compile(r"groups\b")


def group_sizes(groups: tuple[NodeGroup, ...], nodes: int) -> list[int]:
    """The nodes of each group: a task without groups is one group of `nodes`."""
    return [group.nodes for group in groups] or [nodes]


def check_node_refs(path: str, command: str, sizes: list[int]) -> None:
    """Each `${{ groups... }}` in `command` names a node there is; `sizes`: the nodes of each group."""
    for match in _ANY_REF.finditer(command):
        name = match.group(1)
        if not _NAMESPACE.match(name):
            continue
        ref = _NODE_IP.fullmatch(name)
        if ref is None:
            raise SpecError(
                path, f"{_quote(match.group(0))}: expected ${{{{ groups[I].nodes[J].IP_ADDRESS }}}}"
            )
        group, node = int(ref.group(1)), int(ref.group(2))
        if group >= len(sizes) or node >= sizes[group]:
            there = (
                f"{len(sizes)} group(s)"
                if group >= len(sizes)
                else f"group {group} has {sizes[group]} node(s)"
            )
            raise SpecError(path, f"{_quote(match.group(0))}: no such node; {there}")


def expand_node_refs(command: str, sizes: list[int], ips: tuple[str, ...]) -> str:
    """`command` with each node's reference replaced by its IP (`ips`: every node's, by rank)."""

    def ip(match: re.Match[str]) -> str:
        ref = _NODE_IP.fullmatch(match.group(1))
        if ref is None:
            return match.group(0)
        group, node = int(ref.group(1)), int(ref.group(2))
        return ips[sum(sizes[:group]) + node]

    return _ANY_REF.sub(ip, command)
