"""Short texts for GPUs, GPU requests, jobs and times, shared by the scheduler's reasons, the CLI's tables and the
web console. Pure.

A request's text names every condition it has (count, vendor, models, memory, compute capability), so a
reason built on it (`none matching 1 H100 GPU with 96GB.. memory`) is true on its face."""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.spec import GpuRequest, Range
from shared.units import format_mib
from shared.wire import GpuDevice, GpuHealth, Inventory, JobView


def first_few(names: list[str], shown: int = 3) -> str:
    """`a, b, c and 7 more`: a reason that names things stays one line however many there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def index_ranges(indices: tuple[int, ...]) -> str:
    """`0-7`, `0-3,6`: GPU indices as Slurm writes them (`gpu:8(IDX:0-7)`), so that eight GPUs take four
    characters of an 80-column table, not fifteen."""
    runs: list[list[int]] = []
    for index in sorted(set(indices)):
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def rounded_memory_mib(device: GpuDevice) -> int:
    """Devices report a little less than their marketed size (an H100 80GB has 81559 MiB): whole GiB."""
    return round(device.memory_mib / 1024) * 1024


def marketed_gb(memory_mib: int) -> int:
    """The size a GPU is sold as. Vendors count in GiB (H100: 81559 MiB, sold as 80GB) or in decimal GB
    (A10G: 23028 MiB, sold as 24GB); sold sizes are multiples of 8, so prefer the count that is one."""
    gib = round(memory_mib / 1024)
    gb = round(memory_mib * 1.048576 / 1000)
    return gb if gib % 8 and not gb % 8 else gib


def describe_gpus(inventory: Inventory) -> str:
    """`8xH100 (80GB)`, or `4xA10G (24GB), 2xL4 (24GB)` on a mixed host, or `no GPU`."""
    counts: dict[tuple[str, int], int] = {}
    for g in inventory.gpus:
        key = (g.name, marketed_gb(g.memory_mib))
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "no GPU"
    return ", ".join(f"{n}x{name} ({gib}GB)" for (name, gib), n in counts.items())


def describe_request(gpu: GpuRequest | None) -> str:
    """`no GPU`, `2 H100 GPUs`, `1 GPU with 16GB..24GB memory`,
    `2 H100/A100 GPUs with 80GB.. memory and compute capability 9.0..`: every condition named."""
    if gpu is None:
        return "no GPU"
    lo, hi = gpu.count.min, gpu.count.max
    count = f"{lo:g}" if lo == hi else range_text(Range(lo or 0, hi), lambda v: f"{v:g}")
    # a model names its vendor: the parser fills in `nvidia` for an H100, which would only repeat it
    what = "/".join(gpu.names) or gpu.vendor or ""
    words = [count, what, "GPU" if lo == hi == 1 else "GPUs"]
    text = " ".join(w for w in words if w)
    conditions = []
    if gpu.memory_mib is not None:
        conditions.append(f"{range_text(gpu.memory_mib, lambda v: format_mib(int(v)))} memory")
    if gpu.compute_capability is not None:
        conditions.append(f"compute capability {range_text(gpu.compute_capability, lambda v: f'{v:.1f}')}")
    return text + (" with " + " and ".join(conditions) if conditions else "")


def range_text(value: Range, show: Callable[[float], str]) -> str:
    """`16GB..24GB`, `96GB..`, `..24GB`, or one value when both ends are equal."""
    low = "" if value.min is None else show(value.min)
    high = "" if value.max is None else show(value.max)
    if value.min is not None and value.min == value.max:
        return low
    return f"{low}..{high}"


def describe_unhealthy(held: tuple[GpuHealth, ...]) -> str:
    """`1 GPU unhealthy: XID 79 (fallen off the bus)`; with more, each reason after its GPU's index."""
    if not held:
        return ""
    if len(held) == 1:
        return f"1 GPU unhealthy: {held[0].reason}"
    return f"{len(held)} GPUs unhealthy: " + "; ".join(f"GPU {h.index} {h.reason}" for h in held)


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    seconds = max(0, int((now or time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def job_status(job: JobView) -> str:
    if job.stop_requested and job.status in ("assigned", "pulling", "running"):
        return "stopping"
    if job.allocation_status == "unknown":  # its host is unreachable: what runs there is not known now
        return "unknown"
    if job.status in ("done", "failed") and job.exit_code is not None:
        return f"{job.status} ({job.exit_code})"
    if job.spec.nodes > 1 and job.status == "running":  # how many of its nodes run: `1/2 running`
        running = sum(1 for a in job.attempts if a.attempt == job.attempt and a.status == "running")
        return f"{running}/{job.spec.nodes} running"
    return job.status
