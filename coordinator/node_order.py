"""What each node of a multi-node job runs, and when: dstack's `groups`, `startup_order` and `stop_criteria`.

A job's nodes are placed together, all or none, so a node that must start after others keeps its blocks but
is kept from its agent (left out of its host's desired state) until they have started; the node that starts
them wakes its peers' hosts. Being placed, a held node is part of the attempt's one fate: a failing peer or
a stop ends it, at once, as it never reached its agent (coordinator/attempts.py).
"""

from __future__ import annotations

import msgspec

from coordinator.store import AllocRow
from shared.describe import first_few
from shared.spec import TaskSpec
from shared.spec.node_refs import expand_node_refs, group_sizes


def node_spec(spec: TaskSpec, rank: int, ips: tuple[str, ...]) -> TaskSpec:
    """The spec node `rank` runs: its group's commands, with the groups left out (its agent needs none), and
    each `${{ groups[i].nodes[j].IP_ADDRESS }}` replaced by that node's IP (`ips`: every node's, by rank)."""
    group = spec.group_of(rank)
    commands = spec.commands if group is None else group.commands
    if any("${{" in command for command in commands):
        sizes = group_sizes(spec.groups, spec.nodes)
        commands = tuple(expand_node_refs(command, sizes, ips) for command in commands)
    if group is None and commands == spec.commands:
        return spec
    return msgspec.structs.replace(spec, commands=commands, groups=())


def waits_for(spec: TaskSpec, alloc: AllocRow, attempt: list[AllocRow]) -> str:
    """Why node `alloc` may not start yet ("" when it may): `master-first` holds the workers until node 0 has
    started, `workers-first` holds node 0 until every worker has. `attempt`: the nodes of its attempt."""
    if spec.startup_order == "master-first" and alloc.node != 0:
        first = [a for a in attempt if a.node == 0]
    elif spec.startup_order == "workers-first" and alloc.node == 0:
        first = [a for a in attempt if a.node != 0]
    else:
        return ""
    waiting = [str(a.node) for a in first if a.started_at is None]
    if not waiting:
        return ""
    return f"waiting for node {first_few(waiting)} to start (startup_order: {spec.startup_order})"


def ends_attempt_when_done(spec: TaskSpec, alloc: AllocRow) -> bool:
    """Whether node `alloc` ending well ends its attempt, its peers stopped: under `master-done`, node 0 does
    (its exit code decides the job's); otherwise the attempt is done once every node is."""
    return spec.stop_criteria == "master-done" and alloc.node == 0
