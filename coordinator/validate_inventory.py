"""An inventory checked against itself before the scheduler may read it.

The scheduler indexes `inventory.blocks` by block index and trusts that a block's GPUs and CPU cores are the
host's own and no other block's. One agent that breaks that (a bug, an old version, a hostile host) must not
stop placement for every host, so the coordinator refuses such an inventory when it arrives and skips any
stored one that fails the same check. Pure: no I/O.

The rules: block indices are 0..n-1 in order; every GPU a block names is a device of the host and is named by
one block only; a block names each CPU core once, and all blocks together name no more distinct cores than
the host counts (blocks may share cores: `blocks: auto` on a host with fewer cores than GPUs; ids may exceed
the count: an agent confined to cores 8-15 has 8 cores with ids 8..15); the blocks' memory and disk add up
to no more than the host's; an unhealthy device is one of the host's, named once. Sizes and counts are bounded on the wire (shared/wire.py).
"""

from __future__ import annotations

from shared.wire import Block, Inventory, is_ip_address


def inventory_problem(inventory: Inventory) -> str | None:
    """The first inconsistency, as one line naming the field (`inventory.blocks[3].index: 5, expected 3`),
    or None when the inventory is sound."""
    if inventory.internal_ip and not is_ip_address(inventory.internal_ip):
        return f"inventory.internal_ip: {inventory.internal_ip!r} is not an IP address"
    devices = [g.index for g in inventory.gpus]
    duplicate = _first_duplicate(devices)
    if duplicate is not None:
        return f"inventory.gpus[{duplicate}].index: {devices[duplicate]} is named twice"
    return (
        _blocks_problem(inventory, set(devices))
        or _totals_problem(inventory)
        or _health_problem(inventory, set(devices))
    )


def _health_problem(inventory: Inventory, devices: set[int]) -> str | None:
    """An unhealthy mark must name one of the host's devices, once: the scheduler idles its block."""
    marked = [h.index for h in inventory.unhealthy]
    duplicate = _first_duplicate(marked)
    if duplicate is not None:
        return f"inventory.unhealthy[{duplicate}].index: GPU {marked[duplicate]} is marked twice"
    for position, index in enumerate(marked):
        if index not in devices:
            return f"inventory.unhealthy[{position}].index: GPU {index} is not among the host's devices"
    return None


def _blocks_problem(inventory: Inventory, devices: set[int]) -> str | None:
    gpu_owner: dict[int, int] = {}
    for position, block in enumerate(inventory.blocks):
        where = f"inventory.blocks[{position}]"
        if block.index != position:
            return f"{where}.index: {block.index}, expected {position}"
        problem = _claim(block.gpus, gpu_owner, position, f"{where}.gpus", "GPU")
        problem = problem or _claim(block.cpus, {}, position, f"{where}.cpus", "CPU core")
        if problem:
            return problem
        unknown = [g for g in block.gpus if g not in devices]
        if unknown:
            return f"{where}.gpus: GPU {unknown[0]} is not among the host's devices"
    return None


def _claim(ids: tuple[int, ...], owner: dict[int, int], position: int, where: str, what: str) -> str | None:
    for i in ids:
        if i in owner:
            holder = owner[i]
            other = "this block" if holder == position else f"block {holder}"
            return f"{where}: {what} {i} is also named by {other}"
        owner[i] = position
    return None


def _totals_problem(inventory: Inventory) -> str | None:
    blocks: tuple[Block, ...] = inventory.blocks
    cores = len({cpu for b in blocks for cpu in b.cpus})
    if cores > inventory.cpu_count:
        return f"inventory.cpu_count: {inventory.cpu_count}, but the blocks name {cores} CPU cores"
    for name in ("memory_mib", "disk_mib"):
        total, host = sum(getattr(b, name) for b in blocks), getattr(inventory, name)
        if total > host:
            return f"inventory.{name}: {host}, but the blocks' {name} adds up to {total}"
    return None


def _first_duplicate(values: list[int]) -> int | None:
    seen: set[int] = set()
    for position, value in enumerate(values):
        if value in seen:
            return position
        seen.add(value)
    return None
