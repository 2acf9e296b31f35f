"""The agent's reconciler (agent/reconcile.py): desired allocations against local ones, as a pure function."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.reconcile import Action, Forget, Local, ReportGone, Start, Stop, reconcile
from shared.spec import TaskSpec
from shared.states import AllocState
from shared.wire import AllocationSpec

SPEC = TaskSpec(commands=("python train.py",))
RUNNING_STATES = [s for s in AllocState if not s.terminal]
TERMINAL_STATES = [s for s in AllocState if s.terminal]


def desired(alloc_id: str, want: str = "run") -> AllocationSpec:
    return AllocationSpec(
        id=alloc_id,
        job_id=f"job-{alloc_id}",
        job_name="train",
        desired=want,
        spec=SPEC,
        blocks=(0,),
        gpus=(0,),
        cpus=(0, 1),
        memory_mib=1024,
    )


def local(alloc_id: str, state: AllocState, **kwargs: bool) -> dict[str, Local]:
    return {alloc_id: Local(alloc_id, state, **kwargs)}


def test_desired_run_and_absent_starts() -> None:
    alloc = desired("a1")

    assert reconcile([alloc], {}) == [Start(alloc)]


@pytest.mark.parametrize("state", list(AllocState))
def test_desired_run_and_present_does_nothing(state: AllocState) -> None:
    # Running work is left alone, and a finished allocation is never started again: a retry is a new id.
    assert reconcile([desired("a1")], local("a1", state)) == []


@pytest.mark.parametrize("state", RUNNING_STATES)
def test_desired_stop_and_running_stops_once(state: AllocState) -> None:
    assert reconcile([desired("a1", "stop")], local("a1", state)) == [Stop("a1", "stop requested")]
    assert reconcile([desired("a1", "stop")], local("a1", state, stop_requested=True)) == []


@pytest.mark.parametrize("state", TERMINAL_STATES)
def test_desired_stop_and_finished_does_nothing(state: AllocState) -> None:
    assert reconcile([desired("a1", "stop")], local("a1", state, logs_shipped=True)) == []


def test_desired_stop_and_absent_reports_gone() -> None:
    # The host lost it (a wiped state dir): the coordinator must hear so rather than wait for it forever.
    assert reconcile([desired("a1", "stop")], {}) == [ReportGone("a1")]


@pytest.mark.parametrize("state", RUNNING_STATES)
def test_unknown_and_running_is_stopped_once(state: AllocState) -> None:
    assert reconcile([], local("a1", state)) == [Stop("a1", "unknown to the coordinator")]
    assert reconcile([], local("a1", state, stop_requested=True)) == []


@pytest.mark.parametrize("state", TERMINAL_STATES)
def test_unknown_and_finished_is_forgotten_once_its_log_is_shipped(state: AllocState) -> None:
    assert reconcile([], local("a1", state, logs_shipped=True)) == [Forget("a1")]
    assert reconcile([], local("a1", state, logs_shipped=False)) == []


def test_many_allocations_at_once() -> None:
    wanted = [desired("new"), desired("keep"), desired("halt", "stop"), desired("lost", "stop")]
    actual = {
        **local("keep", AllocState.RUNNING),
        **local("halt", AllocState.RUNNING),
        **local("stray", AllocState.PULLING),
        **local("old", AllocState.EXITED, logs_shipped=True),
        **local("shipping", AllocState.FAILED),
    }

    actions = reconcile(wanted, actual)

    assert sorted(actions, key=repr) == sorted(
        [
            Start(wanted[0]),
            Stop("halt", "stop requested"),
            ReportGone("lost"),
            Stop("stray", "unknown to the coordinator"),
            Forget("old"),
        ],
        key=repr,
    )


# --- idempotence ---------------------------------------------------------------------------------------------


def apply(actions: Sequence[Action], actual: Mapping[str, Local]) -> dict[str, Local]:
    """What the executor does with the actions, as far as the next reconcile can see."""
    state = dict(actual)
    for action in actions:
        if isinstance(action, Start):
            assert action.alloc.id not in state, "started an allocation the host already has"
            state[action.alloc.id] = Local(action.alloc.id, AllocState.STARTING)
        elif isinstance(action, Stop):
            state[action.alloc_id] = dataclasses.replace(state[action.alloc_id], stop_requested=True)
        elif isinstance(action, Forget):
            del state[action.alloc_id]
    return state


def restarts(actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, Start | Stop)]


def test_reconciling_again_repeats_no_start_or_stop() -> None:
    wanted = [desired("new"), desired("halt", "stop")]
    actual = {**local("halt", AllocState.RUNNING), **local("stray", AllocState.RUNNING)}

    first = reconcile(wanted, actual)
    assert len(restarts(first)) == 3

    assert reconcile(wanted, apply(first, actual)) == []


def test_a_stopped_allocation_is_forgotten_after_its_log_ships() -> None:
    actual = apply(reconcile([], local("a1", AllocState.RUNNING)), local("a1", AllocState.RUNNING))
    # The runtime reports the end; the shipper gets every byte acknowledged.
    actual["a1"] = dataclasses.replace(actual["a1"], state=AllocState.STOPPED)
    assert reconcile([], actual) == []
    actual["a1"] = dataclasses.replace(actual["a1"], logs_shipped=True)

    assert reconcile([], actual) == [Forget("a1")]
    assert reconcile([], apply([Forget("a1")], actual)) == []


IDS = [f"a{i}" for i in range(6)]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[AllocationSpec], dict[str, Local]]:
    wanted_ids = draw(st.lists(st.sampled_from(IDS), unique=True))
    wanted = [desired(i, draw(st.sampled_from(["run", "stop"]))) for i in wanted_ids]
    actual = {
        i: Local(i, draw(st.sampled_from(list(AllocState))), draw(st.booleans()), draw(st.booleans()))
        for i in draw(st.lists(st.sampled_from(IDS), unique=True))
    }
    return wanted, actual


@settings(max_examples=300, deadline=None)
@given(world=worlds())
def test_reconcile_is_idempotent(world: tuple[list[AllocationSpec], dict[str, Local]]) -> None:
    wanted, actual = world

    first = reconcile(wanted, actual)
    second = reconcile(wanted, apply(first, actual))

    assert restarts(second) == []
    assert not any(isinstance(a, Forget) for a in second)
    # At most one action per allocation, and never a start for one the host has or a stop for one it has not.
    ids = [a.alloc.id if isinstance(a, Start) else a.alloc_id for a in first]
    assert len(ids) == len(set(ids))
    for action in first:
        if isinstance(action, Start):
            assert action.alloc.id not in actual and action.alloc.desired == "run"
        elif isinstance(action, Stop):
            assert action.alloc_id in actual and not actual[action.alloc_id].state.terminal
        elif isinstance(action, Forget):
            assert actual[action.alloc_id].state.terminal and actual[action.alloc_id].logs_shipped
            assert action.alloc_id not in {a.id for a in wanted}
