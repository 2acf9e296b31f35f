"""Block arithmetic: how a host is cut into equal shares (DESIGN.md, "Blocks")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.blocks import BlocksError, CpuTopology, make_blocks, parse_blocks
from shared.wire import Block, GpuDevice

GIB_MIB = 1024


def gpus(count: int) -> tuple[GpuDevice, ...]:
    return tuple(GpuDevice(index=i, vendor="nvidia", name="H100", memory_mib=81559) for i in range(count))


def test_auto_is_one_block_per_gpu() -> None:
    blocks = make_blocks(gpus(8), range(64), 2048 * GIB_MIB, 8000 * GIB_MIB, "auto")

    assert len(blocks) == 8
    assert blocks[0] == Block(
        index=0, gpus=(0,), cpus=tuple(range(8)), memory_mib=256 * GIB_MIB, disk_mib=1000 * GIB_MIB
    )
    assert blocks[7].gpus == (7,)
    assert blocks[7].cpus == tuple(range(56, 64))


def test_two_blocks_take_gpus_and_cpus_in_order() -> None:
    blocks = make_blocks(gpus(8), range(64), 2048 * GIB_MIB, 8000 * GIB_MIB, 2)

    assert [b.gpus for b in blocks] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [b.cpus for b in blocks] == [tuple(range(32)), tuple(range(32, 64))]
    assert all(b.memory_mib == 1024 * GIB_MIB and b.disk_mib == 4000 * GIB_MIB for b in blocks)


def test_four_blocks() -> None:
    blocks = make_blocks(gpus(8), range(64), 2048 * GIB_MIB, 8000 * GIB_MIB, 4)

    assert [b.index for b in blocks] == [0, 1, 2, 3]
    assert [b.gpus for b in blocks] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert blocks[1].cpus == tuple(range(16, 32))
    assert blocks[3].memory_mib == 512 * GIB_MIB


def test_cpu_ids_are_sorted_and_kept_as_given() -> None:
    # Affinity can be a sparse set (taskset, cgroups): ids are kept, in sorted order.
    blocks = make_blocks(gpus(2), [9, 3, 7, 1], 1000, 10, "auto")

    assert [b.cpus for b in blocks] == [(1, 3), (7, 9)]


def test_gpus_are_assigned_in_index_order_even_with_a_gap() -> None:
    # A skipped GPU (MIG on GPU 1) leaves indices 0, 2, 3, 4.
    devices = [GpuDevice(index=i, vendor="nvidia", name="A100", memory_mib=81920) for i in (4, 0, 3, 2)]

    assert [b.gpus for b in make_blocks(devices, range(8), 1000, 10, 2)] == [(0, 2), (3, 4)]


def test_memory_and_disk_are_floor_divided() -> None:
    blocks = make_blocks(gpus(4), range(4), 1003, 10, 4)

    assert {b.memory_mib for b in blocks} == {250}
    assert {b.disk_mib for b in blocks} == {2}


def test_n_that_does_not_divide_the_gpus_is_refused() -> None:
    with pytest.raises(BlocksError) as caught:
        make_blocks(gpus(8), range(64), 1000, 1000, 3)

    assert str(caught.value) == (
        "blocks: 3 does not divide the 8 GPUs of this host; use a divisor of 8 (1, 2, 4, 8) or auto"
    )


def test_n_larger_than_the_gpu_count_is_refused() -> None:
    with pytest.raises(BlocksError, match="blocks: 16 does not divide the 8 GPUs"):
        make_blocks(gpus(8), range(64), 1000, 1000, 16)


def test_n_that_does_not_divide_the_cpus_is_refused() -> None:
    with pytest.raises(BlocksError) as caught:
        make_blocks(gpus(8), range(12), 1000, 1000, 8)

    assert str(caught.value) == (
        "blocks: 8 does not divide the 12 CPU cores of this host; "
        "use a divisor of the 8 GPUs and the 12 CPU cores (1, 2, 4) or auto"
    )


def test_cpu_only_host_auto_is_one_block_per_core() -> None:
    blocks = make_blocks((), range(4), 4000, 400, "auto")

    assert blocks == tuple(
        Block(index=i, gpus=(), cpus=(i,), memory_mib=1000, disk_mib=100) for i in range(4)
    )


def test_cpu_only_host_with_n() -> None:
    blocks = make_blocks((), range(12), 12000, 1200, 3)

    assert [b.cpus for b in blocks] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]
    with pytest.raises(
        BlocksError, match=r"blocks: 5 does not divide the 12 CPU cores .*\(1, 2, 3, 4, 6, 12\)"
    ):
        make_blocks((), range(12), 12000, 1200, 5)


def test_auto_on_a_gpu_host_leaves_spare_cores_out() -> None:
    blocks = make_blocks(gpus(8), range(12), 8000, 800, "auto")

    assert len(blocks) == 8
    assert [b.cpus for b in blocks] == [(i,) for i in range(8)]


def test_auto_with_fewer_cores_than_gpus_shares_the_cores() -> None:
    blocks = make_blocks(gpus(8), range(3), 8000, 800, "auto")

    assert [b.gpus for b in blocks] == [(i,) for i in range(8)]
    assert [b.cpus for b in blocks] == [(0,), (1,), (2,), (0,), (1,), (2,), (0,), (1,)]
    assert {(b.memory_mib, b.disk_mib) for b in blocks} == {(1000, 100)}


def test_shared_cores_stay_on_the_gpus_numa_node() -> None:
    topology = CpuTopology(numa_of={0: 0, 1: 1})
    devices = placed_gpus([0, 0, 1, 1])

    blocks = make_blocks(devices, (0, 1), 4000, 400, "auto", topology)

    assert [b.cpus for b in blocks] == [(0,), (0,), (1,), (1,)]
    assert [b.numa_node for b in blocks] == [0, 0, 1, 1]


def test_an_explicit_n_with_fewer_cores_than_blocks_is_still_refused() -> None:
    with pytest.raises(BlocksError, match=r"blocks: 8 does not divide the 4 CPU cores .*\(1, 2, 4\)"):
        make_blocks(gpus(8), range(4), 8000, 800, 8)


def test_a_host_without_cpus_is_refused() -> None:
    with pytest.raises(BlocksError, match="no usable CPU cores"):
        make_blocks(gpus(1), (), 8000, 800, "auto")


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), (" AUTO ", "auto"), (4, 4), ("8", 8), (1, 1)]
)
def test_parse_blocks_accepts_auto_and_positive_integers(value: object, expected: object) -> None:
    assert parse_blocks(value) == expected


@pytest.mark.parametrize("value", [0, -2, "0", "two", "", 2.0, True, None, "4.5", [4]])
def test_parse_blocks_rejects_anything_else(value: object) -> None:
    with pytest.raises(BlocksError, match=r"^blocks: expected 'auto' or a positive integer, got "):
        parse_blocks(value)


def test_make_blocks_rejects_a_bad_setting() -> None:
    with pytest.raises(BlocksError, match="^blocks: "):
        make_blocks(gpus(2), range(2), 1000, 10, 0)


@st.composite
def hosts(draw: st.DrawFn) -> tuple[int, list[int], int]:
    """A host (GPU count, CPU ids) and a block count that divides both."""
    gpu_count = draw(st.integers(min_value=0, max_value=16))
    cpu_ids = draw(st.lists(st.integers(min_value=0, max_value=511), min_size=1, max_size=128, unique=True))
    counts = [c for c in (gpu_count, len(cpu_ids)) if c]
    n = draw(st.sampled_from([d for d in range(1, min(counts) + 1) if all(c % d == 0 for c in counts)]))
    return gpu_count, cpu_ids, n


@given(hosts(), st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=10**8))
def test_blocks_partition_the_host_exactly(
    host: tuple[int, list[int], int], memory_mib: int, disk_mib: int
) -> None:
    gpu_count, cpu_ids, n = host

    blocks = make_blocks(gpus(gpu_count), cpu_ids, memory_mib, disk_mib, n)

    assert [b.index for b in blocks] == list(range(n))
    all_gpus = [g for b in blocks for g in b.gpus]
    all_cpus = [c for b in blocks for c in b.cpus]
    assert sorted(all_gpus) == list(range(gpu_count)) and len(set(all_gpus)) == len(all_gpus)
    assert sorted(all_cpus) == sorted(cpu_ids) and len(set(all_cpus)) == len(all_cpus)
    assert len({len(b.gpus) for b in blocks}) == 1
    assert len({len(b.cpus) for b in blocks}) == 1
    assert {b.memory_mib for b in blocks} == {memory_mib // n}
    assert {b.disk_mib for b in blocks} == {disk_mib // n}


@given(st.integers(min_value=1, max_value=16), st.integers(min_value=1, max_value=64))
def test_auto_gives_one_block_per_gpu_whenever_there_are_enough_cores(gpu_count: int, extra: int) -> None:
    cpu_count = gpu_count + extra
    blocks = make_blocks(gpus(gpu_count), range(cpu_count), 1000, 1000, "auto")

    assert [b.gpus for b in blocks] == [(i,) for i in range(gpu_count)]
    assert {len(b.cpus) for b in blocks} == {cpu_count // gpu_count}


# --- topology: NUMA-local cores, whole physical cores, neighbours together ---------------------------------

TWO_SOCKETS = CpuTopology(
    numa_of={c: 0 if c % 32 < 16 else 1 for c in range(64)},  # node 0: 0-15,32-47; node 1: 16-31,48-63
    core_of={c: c % 32 for c in range(64)},  # hyperthread siblings c and c+32
)


def placed_gpus(numa: list[int | None], links: dict[int, tuple[int, ...]] | None = None) -> list[GpuDevice]:
    return [
        GpuDevice(
            index=i,
            vendor="nvidia",
            name="A10G",
            memory_mib=23028,
            numa_node=node,
            links=(links or {}).get(i, ()),
        )
        for i, node in enumerate(numa)
    ]


def test_cores_come_from_the_gpus_numa_node_whole_cores_first() -> None:
    blocks = make_blocks(placed_gpus([0, 0, 1, 1]), range(64), 4000, 400, "auto", TWO_SOCKETS)

    assert [(b.gpus, b.cpus, b.numa_node) for b in blocks] == [
        ((0,), (*range(0, 8), *range(32, 40)), 0),
        ((1,), (*range(8, 16), *range(40, 48)), 0),
        ((2,), (*range(16, 24), *range(48, 56)), 1),
        ((3,), (*range(24, 32), *range(56, 64)), 1),
    ]


def test_interleaved_numa_nodes_still_get_local_cores() -> None:
    # GPUs alternate sockets by index: blocks keep index order but each takes its own socket's cores.
    blocks = make_blocks(placed_gpus([0, 1, 0, 1]), range(64), 4000, 400, "auto", TWO_SOCKETS)

    assert [b.numa_node for b in blocks] == [0, 1, 0, 1]
    assert all({TWO_SOCKETS.numa_of[c] for c in b.cpus} == {b.numa_node} for b in blocks)


def test_blocks_of_two_pair_gpus_of_one_island_even_when_indices_interleave() -> None:
    links = {0: (2,), 2: (0,), 1: (3,), 3: (1,)}  # NVLink bridges 0-2 and 1-3
    blocks = make_blocks(placed_gpus([None] * 4, links), range(8), 4000, 400, 2)

    assert [b.gpus for b in blocks] == [(0, 2), (1, 3)]


@st.composite
def topologies(draw: st.DrawFn) -> tuple[list[GpuDevice], list[int], int, CpuTopology]:
    """A host with GPUs on random NUMA nodes (or unknown), random islands, CPU ids on random nodes with random
    sibling pairs, and a block count that divides the GPUs and CPUs."""
    gpu_count, cpu_ids, n = draw(hosts())
    nodes = st.one_of(st.none(), st.integers(0, 3))
    numa = [draw(nodes) for _ in range(gpu_count)]
    island = [draw(st.integers(0, 2)) for _ in range(gpu_count)]
    links = {
        i: tuple(j for j in range(gpu_count) if j != i and island[j] == island[i] > 0)
        for i in range(gpu_count)
    }
    numa_of = {c: draw(st.integers(0, 3)) for c in cpu_ids if draw(st.booleans())}
    core_of = {c: draw(st.sampled_from(cpu_ids)) for c in cpu_ids if draw(st.booleans())}
    return placed_gpus(numa, links), cpu_ids, n, CpuTopology(numa_of=numa_of, core_of=core_of)


@given(topologies())
def test_topology_never_breaks_the_partition(
    host: tuple[list[GpuDevice], list[int], int, CpuTopology],
) -> None:
    devices, cpu_ids, n, topology = host

    blocks = make_blocks(devices, cpu_ids, 1000, 100, n, topology)

    all_gpus = sorted(g for b in blocks for g in b.gpus)
    all_cpus = [c for b in blocks for c in b.cpus]
    assert all_gpus == list(range(len(devices)))
    assert sorted(all_cpus) == sorted(cpu_ids) and len(set(all_cpus)) == len(all_cpus)
    assert len({len(b.gpus) for b in blocks}) == 1 and len({len(b.cpus) for b in blocks}) == 1
    assert [b.index for b in blocks] == list(range(n))
    assert [b.gpus[:1] for b in blocks] == sorted(b.gpus[:1] for b in blocks)
    for b in blocks:
        if b.numa_node is not None and b.gpus:
            assert {devices[g].numa_node for g in b.gpus} == {b.numa_node}
            if topology.numa_of:
                assert {topology.numa_of.get(c) for c in b.cpus} == {b.numa_node}


@given(st.integers(1, 4), st.integers(1, 8), st.sampled_from([1, 2]))
def test_when_each_node_has_room_every_block_is_numa_local(nodes: int, gpus_per_node: int, smt: int) -> None:
    cores_per_gpu = 4
    devices = placed_gpus([i // gpus_per_node for i in range(nodes * gpus_per_node)])
    cpus_per_node = gpus_per_node * cores_per_gpu * smt
    topology = CpuTopology(numa_of={c: c // cpus_per_node for c in range(nodes * cpus_per_node)})

    blocks = make_blocks(devices, range(nodes * cpus_per_node), 1000, 100, "auto", topology)

    for b in blocks:
        assert b.numa_node == devices[b.gpus[0]].numa_node
        assert {topology.numa_of[c] for c in b.cpus} == {b.numa_node}
