"""The agent's decisions as one pure function: desired allocations and local ones in, actions out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.states import AllocState
from shared.wire import AllocationSpec


@dataclass(frozen=True)
class Local:
    """What the agent knows of one allocation it has (or had) on this host."""

    id: str
    state: AllocState
    stop_requested: bool = False
    logs_shipped: bool = False  # every byte of a finished allocation's log is acknowledged


@dataclass(frozen=True)
class Start:
    alloc: AllocationSpec


@dataclass(frozen=True)
class Stop:
    alloc_id: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """Remove a finished allocation's local files: the coordinator has its end and every log byte."""

    alloc_id: str


@dataclass(frozen=True)
class ReportGone:
    """The coordinator expects an allocation this host does not have (its state was lost): say so."""

    alloc_id: str


Action = Start | Stop | Forget | ReportGone


def reconcile(
    desired: Sequence[AllocationSpec], actual: Mapping[str, Local], fence: str = ""
) -> list[Action]:
    """Idempotent: applying the actions and calling again with the new state yields no repeats.

    An allocation absent from the desired state is unknown to the coordinator (or finished, as far as it is
    concerned): a running one is stopped, a finished one forgotten once its log is shipped. With `fence`
    (the agent fences itself off: agent/fence.py), every running allocation stops with that reason and
    nothing starts, whatever the last desired state said.
    """
    if fence:
        return [Stop(i, fence) for i, a in actual.items() if not a.state.terminal and not a.stop_requested]
    actions: list[Action] = []
    wanted = {a.id: a for a in desired}
    for alloc in desired:
        local = actual.get(alloc.id)
        if local is None:
            actions.append(Start(alloc) if alloc.desired == "run" else ReportGone(alloc.id))
        elif alloc.desired == "stop" and not local.state.terminal and not local.stop_requested:
            actions.append(Stop(alloc.id, "stop requested"))
    for alloc_id, local in actual.items():
        if alloc_id in wanted:
            continue
        if not local.state.terminal and not local.stop_requested:
            actions.append(Stop(alloc_id, "unknown to the coordinator"))
        elif local.state.terminal and local.logs_shipped:
            actions.append(Forget(alloc_id))
    return actions
