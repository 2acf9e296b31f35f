"""Cut a host into equal blocks: the unit that concurrent jobs share (DESIGN.md, "Blocks").

Pure functions over plain data; the agent refuses to start on a `BlocksError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.wire import Block, GpuDevice

AUTO = "auto"


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
        if text.isdigit() and int(text) >= 1:
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
) -> tuple[Block, ...]:
    """Cut the host into equal blocks, numbered from 0.

    `auto` is one block per GPU, or one per CPU core on a host without GPUs. An explicit N must divide the
    GPU count and the CPU count, else BlocksError. GPUs go to blocks in index order and CPU ids in sorted
    order (block 0 gets the first ones); memory and disk are floor-divided. Under `auto` on a GPU host,
    CPU cores left over by the division belong to no block. Pure.
    """
    count = _block_count(len(gpus), len(cpus), parse_blocks(blocks))
    gpu_ids = sorted(gpu.index for gpu in gpus)
    cpu_ids = sorted(cpus)
    gpus_per_block = len(gpu_ids) // count
    cpus_per_block = len(cpu_ids) // count
    return tuple(
        Block(
            index=i,
            gpus=tuple(gpu_ids[i * gpus_per_block : (i + 1) * gpus_per_block]),
            cpus=tuple(cpu_ids[i * cpus_per_block : (i + 1) * cpus_per_block]),
            memory_mib=memory_mib // count,
            disk_mib=disk_mib // count,
        )
        for i in range(count)
    )


def _block_count(gpu_count: int, cpu_count: int, blocks: str | int) -> int:
    """How many blocks `blocks` means on this host; raises BlocksError when it cannot be honoured."""
    if cpu_count == 0:
        raise BlocksError("blocks: this host has no usable CPU cores")
    if blocks == AUTO:
        if gpu_count > cpu_count:
            raise BlocksError(
                f"blocks: auto needs a CPU core per GPU, but this host has {gpu_count} GPUs and "
                f"{cpu_count} CPU cores; use a divisor of both ({_divisors(gpu_count, cpu_count)})"
            )
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
