"""Cut a host into equal blocks: the unit that concurrent jobs share (DESIGN.md, "Blocks").

Pure functions over plain data; the agent refuses to start on a `BlocksError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.topology import common, islands
from shared.wire import Block, GpuDevice

AUTO = "auto"
UNKNOWN_NODE = -1  # the pool of CPU ids that the NUMA map does not place


@dataclass(frozen=True)
class CpuTopology:
    """Where each CPU id sits: its NUMA node, and its physical core (the lowest id among its hyperthread
    siblings). An id missing from `numa_of` is on no known node; one missing from `core_of` is its own core.
    Empty maps (the default) describe a host without NUMA: CPU ids are then taken in sorted order."""

    numa_of: Mapping[int, int] = field(default_factory=dict)
    core_of: Mapping[int, int] = field(default_factory=dict)


class BlocksError(ValueError):
    """The `blocks` setting cannot cut this host into equal blocks; the message says what to use."""


def parse_blocks(value: object) -> str | int:
    """Validate the `blocks` config value: `"auto"` or a positive integer (an int or a decimal string).

    Returns `"auto"` or the int; raises BlocksError naming `blocks` otherwise. Pure.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isascii() and text.isdigit() and int(text) >= 1:
            return int(text)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise BlocksError(f"blocks: expected 'auto' or a positive integer, got {value!r}")


def make_blocks(
    gpus: Sequence[GpuDevice],
    cpus: Sequence[int],
    memory_mib: int,
    disk_mib: int,
    blocks: str | int,
    topology: CpuTopology | None = None,
) -> tuple[Block, ...]:
    """Cut the host into equal blocks, numbered from 0 in the order of their lowest GPU index.

    `auto` is one block per GPU, or one per CPU core on a host without GPUs; it never refuses: on a host
    with fewer CPU ids than GPUs (a VM with passed-through GPUs) each block gets one CPU id, shared with
    other blocks. An explicit N must divide the GPU count and the CPU count, else BlocksError. Memory and
    disk are floor-divided.

    GPUs that share an NVLink / XGMI island, then a NUMA node, then a PCIe root go to the same block (on
    ordinary hosts that is index order). Each block takes its CPU ids from the NUMA node of its GPUs while
    that node has enough left (whole physical cores first, so hyperthread siblings stay in one block), then
    from the lowest node that still has enough. Without a NUMA map CPU ids go in sorted order. Under `auto`
    on a GPU host, CPU ids left over by the division belong to no block. Pure.
    """
    count = _block_count(len(gpus), len(cpus), parse_blocks(blocks))
    topology = topology or CpuTopology()
    by_index = {g.index: g for g in gpus}
    gpu_sets = _cut_gpus(gpus, count)
    wanted = [common(by_index[i].numa_node for i in gpu_set) for gpu_set in gpu_sets]
    if count > len(cpus):
        cpu_sets = _share_cpus(cpus, wanted, topology)
    else:
        cpu_sets = _cut_cpus(cpus, len(cpus) // count, wanted, topology)
    return tuple(
        Block(
            index=i,
            gpus=gpu_set,
            cpus=cpu_set,
            memory_mib=memory_mib // count,
            disk_mib=disk_mib // count,
            numa_node=_block_numa([by_index[g] for g in gpu_set], cpu_set, topology),
        )
        for i, (gpu_set, cpu_set) in enumerate(zip(gpu_sets, cpu_sets, strict=True))
    )


def _cut_gpus(gpus: Sequence[GpuDevice], count: int) -> list[tuple[int, ...]]:
    """`count` equal sets of GPU indices, neighbours together, sorted by their lowest index."""
    if not gpus:
        return [()] * count
    island_of = islands(gpus)

    def locality(g: GpuDevice) -> tuple[int, int, int, str, int]:
        linked = g.index in island_of
        numa = g.numa_node if g.numa_node is not None else UNKNOWN_NODE
        return (0 if linked else 1, island_of.get(g.index, 0), numa, g.pcie_root, g.index)

    ordered = [g.index for g in sorted(gpus, key=locality)]
    per_block = len(ordered) // count
    sets = [tuple(sorted(ordered[i * per_block : (i + 1) * per_block])) for i in range(count)]
    return sorted(sets)


def _cut_cpus(
    cpus: Sequence[int], per_block: int, wanted: Sequence[int | None], topology: CpuTopology
) -> list[tuple[int, ...]]:
    """One set of `per_block` CPU ids per block, from the block's `wanted` NUMA node where it has enough."""
    pools: dict[int, list[int]] = {}
    for cpu in sorted(cpus):
        pools.setdefault(topology.numa_of.get(cpu, UNKNOWN_NODE), []).append(cpu)
    for pool in pools.values():
        pool.sort(key=lambda cpu: (topology.core_of.get(cpu, cpu), cpu))
    taken: list[list[int] | None] = [None] * len(wanted)
    for i, node in enumerate(wanted):
        if node is not None and len(pools.get(node, ())) >= per_block:
            taken[i] = _take(pools[node], per_block)
    return [tuple(sorted(t if t is not None else _take_anywhere(pools, per_block))) for t in taken]


def _share_cpus(
    cpus: Sequence[int], wanted: Sequence[int | None], topology: CpuTopology
) -> list[tuple[int, ...]]:
    """One CPU id per block, for more blocks than CPU ids: from the block's `wanted` NUMA node where it has
    any, the least shared one first (ties: the lowest id), so blocks spread evenly over the cores."""
    uses = dict.fromkeys(sorted(cpus), 0)
    sets: list[tuple[int, ...]] = []
    for node in wanted:
        local = [c for c in uses if node is not None and topology.numa_of.get(c, UNKNOWN_NODE) == node]
        cpu = min(local or uses, key=lambda c: (uses[c], c))
        uses[cpu] += 1
        sets.append((cpu,))
    return sets


def _take(pool: list[int], n: int) -> list[int]:
    chosen = pool[:n]
    del pool[:n]
    return chosen


def _take_anywhere(pools: dict[int, list[int]], n: int) -> list[int]:
    """`n` CPU ids from the lowest node that has that many left, else from the nodes in order."""
    for node in sorted(pools):
        if len(pools[node]) >= n:
            return _take(pools[node], n)
    chosen: list[int] = []
    for node in sorted(pools):
        chosen += _take(pools[node], n - len(chosen))
    return chosen


def _block_numa(devices: Sequence[GpuDevice], cpus: Sequence[int], topology: CpuTopology) -> int | None:
    """The NUMA node that the block's GPUs and CPU ids share, or None when they do not share one."""
    cpu_node = common(topology.numa_of.get(c) for c in cpus) if topology.numa_of else None
    if not devices:
        return cpu_node
    gpu_node = common(d.numa_node for d in devices)
    if topology.numa_of and gpu_node != cpu_node:
        return None
    return gpu_node


def _block_count(gpu_count: int, cpu_count: int, blocks: str | int) -> int:
    """How many blocks `blocks` means on this host; raises BlocksError when it cannot be honoured."""
    if cpu_count == 0:
        raise BlocksError("blocks: this host has no usable CPU cores")
    if blocks == AUTO:
        return gpu_count or cpu_count
    assert isinstance(blocks, int)
    if gpu_count and gpu_count % blocks:
        raise BlocksError(
            f"blocks: {blocks} does not divide the {gpu_count} GPUs of this host; "
            f"use a divisor of {gpu_count} ({_divisors(gpu_count)}) or auto"
        )
    if cpu_count % blocks:
        counted = f"the {gpu_count} GPUs and " if gpu_count else ""
        raise BlocksError(
            f"blocks: {blocks} does not divide the {cpu_count} CPU cores of this host; "
            f"use a divisor of {counted}the {cpu_count} CPU cores ({_divisors(gpu_count, cpu_count)}) or auto"
        )
    return blocks


def _divisors(*counts: int) -> str:
    """`"1, 2, 4"`: the numbers that divide every non-zero count."""
    nonzero = [c for c in counts if c]
    return ", ".join(str(d) for d in range(1, min(nonzero) + 1) if all(c % d == 0 for c in nonzero))
