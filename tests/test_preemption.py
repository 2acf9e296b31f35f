"""Which running jobs a pending one stops (coordinator/preemption.py): examples of the rule, then a property
over random hosts: the choice is the one that stops the least, as trying every set of victims finds it."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.preempting import waiting_reason
from coordinator.preemption import Preemption, Room, Running, choose

ALL = frozenset(range(8))


def running(job_id: str, priority: int, *blocks: int, started_at: float = 0.0) -> Running:
    return Running(job_id, priority, started_at, frozenset(blocks))


def room(name: str, need: int, *jobs: Running, free: frozenset[int] = frozenset()) -> Room:
    return Room(f"id-{name}", name, need, free, ALL, jobs)


def victims(choice: Preemption | None) -> list[str]:
    assert choice is not None
    return [v.job_id for v in choice.victims]


def test_only_strictly_lower_priorities_are_stopped() -> None:
    equal = room("h", 2, running("same", 5, 0, 1))
    assert choose(5, [equal]) is None
    assert victims(choose(6, [equal])) == ["same"]


def test_a_job_is_never_stopped_for_one_that_would_still_not_fit() -> None:
    # two blocks are lower priority, the job needs three: stopping them would not be enough
    h = room("h", 3, running("low", 0, 0), running("low2", 0, 1), running("high", 9, 2))
    assert choose(5, [h]) is None


def test_blocks_the_job_cannot_use_do_not_count() -> None:
    h = Room("id-h", "h", 2, frozenset(), frozenset({0, 1}), (running("a", 0, 2, 3), running("b", 0, 0, 1)))
    assert victims(choose(5, [h])) == ["b"]


def test_the_fewest_victims_win_over_lower_priorities() -> None:
    h = room("h", 4, running("big", 3, 0, 1, 2, 3), running("s1", 0, 4, 5), running("s2", 0, 6, 7))
    assert victims(choose(5, [h])) == ["big"]


def test_then_the_lowest_priorities_then_the_youngest() -> None:
    h = room(
        "h",
        1,
        running("old-low", 1, 0, started_at=10),
        running("young-low", 1, 1, started_at=20),
        running("higher", 2, 2, started_at=30),
    )
    assert victims(choose(5, [h])) == ["young-low"]


def test_the_host_that_stops_the_least_is_chosen() -> None:
    two = room("a", 2, running("a1", 0, 0), running("a2", 0, 1))
    one = room("b", 2, running("b1", 1, 0, 1))
    half_free = room("c", 2, running("c1", 2, 1), free=frozenset({0}))
    choice = choose(5, [two, one, half_free])
    assert choice is not None and choice.host_id == "id-b"  # one victim; b1's priority is lower than c1's
    assert victims(choose(5, [two, half_free])) == ["c1"]


def test_a_job_that_fits_already_stops_nothing() -> None:
    assert choose(5, [room("h", 1, running("low", 0, 1), free=frozenset({0}))]) is None


RUNS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.sets(st.integers(0, 7), min_size=1, max_size=3)),
    max_size=6,
)


@st.composite
def rooms(draw: st.DrawFn) -> list[Room]:
    """1-3 hosts of 8 blocks: jobs of random priorities and ages on disjoint blocks, the rest free."""
    made = []
    for h in range(draw(st.integers(1, 3))):
        taken: set[int] = set()
        jobs = []
        for n, (priority, age, blocks) in enumerate(draw(RUNS)):
            mine = frozenset(blocks - taken)
            if mine:
                taken |= mine
                jobs.append(Running(f"j{h}-{n}", priority, float(age), mine))
        matching = frozenset(draw(st.sets(st.integers(0, 7), min_size=1)))
        free = (ALL - taken) & matching
        made.append(Room(f"id-h{h}", f"h{h}", draw(st.integers(1, 8)), free, matching, tuple(jobs)))
    return made


@settings(max_examples=300, deadline=None)
@given(rooms(), st.integers(0, 4))
def test_the_choice_stops_the_least_of_every_way_that_makes_room(hosts: list[Room], priority: int) -> None:
    best = None
    for r in hosts:
        missing = r.need - len(r.free)
        lower = [v for v in r.running if v.priority < priority]
        for size in range(1, len(lower) + 1):
            for subset in combinations(lower, size):
                if missing > 0 and sum(len(v.blocks & r.matching) for v in subset) >= missing:
                    key = (size, sorted((v.cost() for v in subset), reverse=True), r.name)
                    if best is None or key < best[0]:
                        best = (key, r.host_id, sorted(v.job_id for v in subset))
    choice = choose(priority, hosts)
    if best is None:
        assert choice is None
    else:
        assert choice is not None
        assert (choice.host_id, sorted(v.job_id for v in choice.victims)) == best[1:]


def test_a_job_waiting_for_many_victims_names_a_few_and_counts_the_rest() -> None:
    """One line, however many one-core jobs a large request stopped on a CPU host of many blocks."""
    victims = [f"j{n:07d} (priority 0)" for n in range(200)]
    assert (
        waiting_reason(victims[:1], "cpu-1")
        == "waiting for preempted job j0000000 (priority 0) to stop on host cpu-1"
    )
    assert waiting_reason(victims, "cpu-1") == (
        "waiting for preempted jobs j0000000 (priority 0), j0000001 (priority 0), j0000002 (priority 0)"
        " and 197 more to stop on host cpu-1"
    )
