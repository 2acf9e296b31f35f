"""Placement by topology on the recorded hosts (coordinator/locality.py through `schedule`): a job's GPUs share
an NVLink/XGMI island, else a PCIe root, else a NUMA node, and best fit keeps the larger free sets whole."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.blocks import CpuTopology, make_blocks
from coordinator.locality import block_levels, choose_blocks
from coordinator.scheduler import HostCapacity, PendingJob, schedule
from shared.spec import parse_spec
from shared.wire import Inventory
from tests.fakes import fixture_inventory


def gpu_job(job_id: str, gpus: int | str, seq: int = 0) -> PendingJob:
    spec = parse_spec(f"commands: [train]\nresources: {{gpu: '{gpus}'}}\n")
    return PendingJob(job_id, spec, seq)


def placed(inventory: Inventory, busy: Sequence[int], *jobs: PendingJob) -> list[tuple[int, ...]]:
    """The GPUs each job gets on this one host (in job order), with `busy` blocks taken."""
    host = HostCapacity("id", inventory.hostname, inventory, frozenset(busy))
    result = schedule(list(jobs), [host])
    by_job = {p.job_id: p.gpus for p in result.placements}
    return [by_job.get(j.job_id, ()) for j in jobs]


@pytest.fixture(scope="module")
def islands(tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    return fixture_inventory(tmp_path_factory.mktemp("sys"), "nvml", "a100_sxm4_2x4")


def test_a_four_gpu_job_gets_a_whole_island_while_one_is_free(islands: Inventory) -> None:
    assert placed(islands, [], gpu_job("a", 4)) == [(0, 1, 2, 3)]
    assert placed(islands, [0], gpu_job("a", 4)) == [(4, 5, 6, 7)]
    assert placed(islands, [6], gpu_job("a", 4)) == [(0, 1, 2, 3)]
    # Two in one pass: each gets an island.
    assert placed(islands, [], gpu_job("a", 4), gpu_job("b", 4, seq=1)) == [(0, 1, 2, 3), (4, 5, 6, 7)]


def test_when_no_island_is_free_the_job_spans_as_few_as_possible(islands: Inventory) -> None:
    # Islands hold 3 and 3 free GPUs: one whole, and the rest from the other's PCIe switch with a spare.
    assert placed(islands, [0, 5], gpu_job("a", 4)) == [(1, 2, 3, 4)]


def test_best_fit_leaves_the_larger_island_whole(islands: Inventory) -> None:
    assert placed(islands, [0, 1], gpu_job("a", 2)) == [(2, 3)]
    assert placed(islands, [4], gpu_job("a", 1)) == [(5,)]  # 5 shares a PCIe switch with the busy 4
    assert placed(islands, [4], gpu_job("a", 3)) == [(5, 6, 7)]


def test_blocks_of_two_on_two_islands(tmp_path: Path) -> None:
    inventory = fixture_inventory(tmp_path, "nvml", "a100_sxm4_2x4", blocks=4)

    assert placed(inventory, [0], gpu_job("a", 4)) == [(4, 5, 6, 7)]
    assert placed(inventory, [0, 3], gpu_job("a", 4)) == [(2, 3, 4, 5)]


def test_nvswitch_host_keeps_a_job_on_one_socket(tmp_path: Path) -> None:
    h100 = fixture_inventory(tmp_path, "nvml", "h100_sxm_8")

    assert placed(h100, [0], gpu_job("a", 4)) == [(4, 5, 6, 7)]  # all one island: then the NUMA node
    assert placed(h100, [4, 5, 6], gpu_job("a", 1)) == [(7,)]  # the broken socket first
    assert placed(h100, [0, 1, 2, 4, 5, 6], gpu_job("a", 2)) == [(3, 7)]  # still one island


def test_pcie_root_then_numa_node_without_nvlink(tmp_path: Path) -> None:
    a10g = fixture_inventory(tmp_path, "nvml", "a10g_4_two_numa")

    assert placed(a10g, [], gpu_job("a", 2)) == [(0, 1)]  # one PCIe switch beats one NUMA node
    assert placed(a10g, [0], gpu_job("a", 2)) == [(2, 3)]
    assert placed(a10g, [0, 2], gpu_job("a", 2)) == [(1, 3)]
    assert placed(a10g, [], gpu_job("a", 1)) == [(2,)]  # leaves the PCIe pair whole
    assert placed(a10g, [], gpu_job("a", 1), gpu_job("b", 1, 1), gpu_job("c", 2, 2)) == [(2,), (3,), (0, 1)]


def test_xgmi_island_and_numa_on_mi300x(tmp_path: Path) -> None:
    mi300x = fixture_inventory(tmp_path, "amdsmi", "mi300x_8")

    assert placed(mi300x, [1], gpu_job("a", 4)) == [(4, 5, 6, 7)]
    assert placed(mi300x, [1, 5], gpu_job("a", 4)) == [(0, 2, 3, 4)]


def test_cpu_jobs_on_a_two_socket_host_stay_on_one_node() -> None:
    topology = CpuTopology(numa_of={c: 0 if c < 8 else 1 for c in range(16)})
    blocks = make_blocks((), range(16), 16_000, 1_600, "auto", topology)
    inventory = Inventory("cpu", 16, 16_000, 1_600, (), blocks, runtimes=("process",))
    job = PendingJob("j", parse_spec("commands: [x]\nresources: {cpu: 4..}\n"), 0)
    host = HostCapacity("id", "cpu", inventory, frozenset({0, 1, 2, 3, 4, 5}))

    (placement,) = schedule([job], [host]).placements

    assert placement.cpus == (8, 9, 10, 11)  # node 1 has 8 free; node 0's two spare cores stay


def test_choose_blocks_without_any_topology_takes_the_lowest() -> None:
    assert choose_blocks([5, 2, 7, 1], 2, ({}, {}, {})) == [1, 2]
    assert choose_blocks([3, 1], 2, ({}, {}, {})) == [1, 3]


def test_levels_of_a_block_split_across_sockets(tmp_path: Path) -> None:
    # blocks: 1 on two islands: the one block belongs to no island, no root, no node.
    whole = fixture_inventory(tmp_path, "nvml", "a100_sxm4_2x4", blocks=1)

    assert block_levels(whole) == ({}, {}, {})


# --- compute capability ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a10g_and_h100(tmp_path_factory: pytest.TempPathFactory) -> tuple[Inventory, Inventory]:
    root = tmp_path_factory.mktemp("sys")
    return (
        fixture_inventory(root, "nvml", "a10g_4_two_numa", hostname="a10g"),
        fixture_inventory(root, "nvml", "h100_sxm_8", hostname="h100"),
    )


CAPABILITY_9 = ", compute_capability: 9.0.."


def capability_job(job_id: str, count: str, seq: int) -> PendingJob:
    spec = parse_spec(f"commands: [train]\nresources: {{gpu: {{count: {count}{CAPABILITY_9}}}}}\n")
    return PendingJob(job_id, spec, seq)


@settings(max_examples=150, deadline=None)
@given(
    busy_a10g=st.frozensets(st.integers(0, 3)),
    busy_h100=st.frozensets(st.integers(0, 7)),
    counts=st.lists(st.sampled_from(["1", "2", "4", "1..4", "0..2", "1.."]), min_size=1, max_size=8),
)
def test_compute_capability_9_never_lands_on_an_a10g(
    a10g_and_h100: tuple[Inventory, Inventory],
    busy_a10g: frozenset[int],
    busy_h100: frozenset[int],
    counts: list[str],
) -> None:
    a10g, h100 = a10g_and_h100
    hosts = [HostCapacity("a", "a10g", a10g, busy_a10g), HostCapacity("h", "h100", h100, busy_h100)]
    jobs = [capability_job(f"j{i}", count, i) for i, count in enumerate(counts)]

    result = schedule(jobs, hosts)

    assert all(p.host_id == "h" for p in result.placements if p.gpus)
    assert all(h100.gpus[g].compute_capability == "9.0" for p in result.placements for g in p.gpus)


def test_compute_capability_on_an_a10g_fleet_says_why(a10g_and_h100: tuple[Inventory, Inventory]) -> None:
    a10g, _ = a10g_and_h100
    result = schedule([capability_job("j", "1", 0)], [HostCapacity("a", "a10g", a10g)])

    assert result.pending == {
        "j": "no host can ever fit this job: a10g has 4xA10G (24GB), none matching "
        "1 nvidia GPU with compute capability 9.0.."
    }
    older = parse_spec("commands: [x]\nresources: {gpu: {compute_capability: 8.0..8.6, count: 2}}\n")
    (placement,) = schedule([PendingJob("k", older, 0)], [HostCapacity("a", "a10g", a10g)]).placements
    assert placement.gpus == (0, 1)


def test_an_a10g_matches_its_marketed_24gb(a10g_and_h100: tuple[Inventory, Inventory]) -> None:
    # 23028 MiB is 22.5 GiB but 24.1 GB, the size NVIDIA and AWS give; `gpu: 24GB` must find it.
    a10g, h100 = a10g_and_h100
    hosts = [HostCapacity("a", "a10g", a10g), HostCapacity("h", "h100", h100)]
    result = schedule([gpu_job("j", "24GB:2")], hosts)

    assert [(p.host_id, p.gpus) for p in result.placements] == [("a", (0, 1))]


def test_a_job_goes_to_a_looser_host_rather_than_be_split_across_islands(islands: Inventory) -> None:
    split = HostCapacity("split", "a-split", islands, frozenset({0, 4, 5}))  # free: 3 + 2, spare 1
    whole = HostCapacity("whole", "b-whole", islands, frozenset())  # free: 4 + 4, spare 4
    result = schedule([gpu_job("four", 4)], [split, whole])
    assert [(p.host_id, p.gpus) for p in result.placements] == [("whole", (0, 1, 2, 3))]
    # A job one island of the tighter host holds goes there, as before.
    broken = HostCapacity("split", "a-split", islands, frozenset({0, 1}))  # free: 2 + 4, spare 3
    result = schedule([gpu_job("three", 3)], [broken, whole])
    assert [(p.host_id, p.gpus) for p in result.placements] == [("split", (4, 5, 6))]
    # With no host that keeps it together, the tightest one takes it, as closely as it can.
    result = schedule([gpu_job("four", 4)], [split])
    assert [(p.host_id, p.gpus) for p in result.placements] == [("split", (1, 2, 3, 6))]
