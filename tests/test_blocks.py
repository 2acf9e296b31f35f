"""Block arithmetic: how a host is cut into equal shares (DESIGN.md, "Blocks")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.blocks import BlocksError, make_blocks, parse_blocks
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


def test_auto_with_fewer_cores_than_gpus_is_refused() -> None:
    with pytest.raises(BlocksError, match=r"auto needs a CPU core per GPU.*\(1, 2, 4\)"):
        make_blocks(gpus(8), range(4), 8000, 800, "auto")


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
