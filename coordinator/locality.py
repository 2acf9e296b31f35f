"""Which of a host's free blocks a job gets: the closest set, by NVLink/XGMI island, PCIe root, NUMA node.

Pure functions over plain data. The scheduler builds a host's `Levels` once per pass (`block_levels`) and
calls `choose_blocks` once per placement; both are small and linear in the host's block count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence

from shared.topology import common, islands
from shared.wire import Inventory

# Block index → its group at one level of closeness. A block that belongs to no group at that level (GPUs
# without NVLink, GPUs of one block under two host bridges, an unknown NUMA node) is absent.
Level = Mapping[int, Hashable]
Levels = tuple[Level, ...]


def block_levels(inventory: Inventory) -> Levels:
    """The host's blocks grouped by NVLink/XGMI island, then PCIe host bridge, then NUMA node, best first.

    A block is in a group when all its GPUs are; its NUMA node is the block's own (`Block.numa_node`, which
    covers CPU-only blocks too) or else the one its GPUs share. Pure.
    """
    by_index = {g.index: g for g in inventory.gpus}
    island_of = islands(inventory.gpus)
    link: dict[int, Hashable] = {}
    root: dict[int, Hashable] = {}
    numa: dict[int, Hashable] = {}
    for block in inventory.blocks:
        devices = [by_index[i] for i in block.gpus if i in by_index]
        if devices and all(d.index in island_of for d in devices):
            island = common(island_of[d.index] for d in devices)
            if island is not None:
                link[block.index] = island
        pcie_root = common(d.pcie_root for d in devices) if devices else None
        if pcie_root:
            root[block.index] = pcie_root
        node = block.numa_node if block.numa_node is not None else common(d.numa_node for d in devices)
        if node is not None:
            numa[block.index] = node
    return (link, root, numa)


def choose_blocks(free: Sequence[int], k: int, levels: Levels) -> list[int]:
    """`k` of the `free` blocks (k <= len(free)), as close together as the host allows, sorted. Pure.

    At the first level (island, then PCIe root, then NUMA node) where some group has at least `k` free
    blocks, the job gets blocks of one such group: the one with the fewest free blocks (best fit, so larger
    free groups stay whole for larger jobs; `_fragmentation` breaks ties), chosen inside it by the levels
    after. When no group at any level holds `k`, see `_spill`.
    """
    if k >= len(free):
        return sorted(free)[:k]
    for depth, level in enumerate(levels):
        fitting = [group for group in _groups(free, level) if len(group) >= k]
        if fitting:
            best = min(fitting, key=_fragmentation(free, levels[:depth] + levels[depth + 1 :]))
            return choose_blocks(best, k, levels[depth + 1 :])
    return _spill(free, k, levels)


def closeness(blocks: Sequence[int], k: int, levels: Levels) -> int:
    """How close `k` of `blocks` can be: the first level (0 = island) with a group of `k` of them, or
    `len(levels)` when none has. Pure."""
    for depth, level in enumerate(levels):
        if any(len(group) >= k for group in _groups(blocks, level)):
            return depth
    return len(levels)


def _fragmentation(free: Sequence[int], others: Levels) -> Callable[[list[int]], tuple[int, ...]]:
    """Order of preference among groups that can hold a job: fewest free blocks first; among equals, the
    one whose first block sits in the smallest free group at the other levels (taking from an already
    broken NUMA node keeps a whole one whole); then the lowest block index."""
    sizes = [Counter(level[b] for b in free if b in level) for level in others]

    def key(group: list[int]) -> tuple[int, ...]:
        first = group[0]
        around = (
            count[level[first]] if first in level else len(free)
            for count, level in zip(sizes, others, strict=True)
        )
        return (len(group), *around, first)

    return key


def _spill(free: Sequence[int], k: int, levels: Levels) -> list[int]:
    """`k` blocks from as few groups as possible, at the first level whose groups say anything (one has two
    free blocks or more): whole groups, largest first, until the rest fits in one group; the rest comes from
    the smallest group that holds it. Blocks in no group count as groups of one. Without any such level:
    the lowest block indices."""
    for depth, level in enumerate(levels):
        groups = _groups(free, level) + [[b] for b in free if b not in level]
        if max(len(group) for group in groups) < 2:
            continue
        chosen: list[int] = []
        while len(chosen) < k:
            need = k - len(chosen)
            fitting = [group for group in groups if len(group) >= need]
            if fitting:
                best = min(fitting, key=_fragmentation(free, levels[:depth] + levels[depth + 1 :]))
                chosen += choose_blocks(best, need, levels[depth + 1 :])
                break
            largest = max(groups, key=lambda group: (len(group), -group[0]))
            groups.remove(largest)
            chosen += largest
        return sorted(chosen)
    return sorted(free)[:k]


def _groups(blocks: Sequence[int], level: Level) -> list[list[int]]:
    """The blocks that have a group at `level`, grouped, each group sorted, in order of first block."""
    grouped: dict[Hashable, list[int]] = {}
    for b in sorted(blocks):
        if b in level:
            grouped.setdefault(level[b], []).append(b)
    return list(grouped.values())
