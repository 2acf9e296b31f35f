"""Wire models of the agent ↔ coordinator protocol and of the user API (JSON over HTTPS).

Every struct here is sent as JSON by msgspec. Fields with defaults may be added later; a field is never
renamed or re-typed, so an older agent keeps talking to a newer coordinator.
"""

from __future__ import annotations

import msgspec

from shared.spec import TaskSpec


class Wire(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base of every wire struct: unknown fields are ignored, so either side may be newer."""


# --- inventory: what a host has, as the agent detected it ---------------------------------------------


class GpuDevice(Wire, frozen=True):
    index: int  # the NVML / amdsmi index; CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA agree with it
    vendor: str  # "nvidia" | "amd" | "intel"
    name: str  # short product name: "H100", "A10G", "MI300X"
    memory_mib: int
    uuid: str = ""
    pci_bus_id: str = ""
    numa_node: int | None = None
    simulated: bool = False


class Block(Wire, frozen=True):
    """One equal share of a host: its GPUs (device indices), CPU core ids, memory and disk."""

    index: int
    gpus: tuple[int, ...]
    cpus: tuple[int, ...]
    memory_mib: int
    disk_mib: int


class Inventory(Wire, frozen=True):
    hostname: str
    cpu_count: int
    memory_mib: int
    disk_mib: int
    gpus: tuple[GpuDevice, ...]
    blocks: tuple[Block, ...]
    runtimes: tuple[str, ...] = ("process",)
    simulated: bool = False
    warnings: tuple[str, ...] = ()
    volume_prefixes: tuple[str, ...] = ()  # host paths under these may be mounted into containers
    privileged_allowed: bool = False  # the agent's config lets jobs ask for privileged containers


# --- sync: the one long poll -------------------------------------------------------------------------


class AllocationSpec(Wire, frozen=True):
    """Desired state of one allocation on one host, chosen by the coordinator."""

    id: str
    job_id: str
    job_name: str
    desired: str  # "run" | "stop"
    spec: TaskSpec
    blocks: tuple[int, ...]
    gpus: tuple[int, ...]
    cpus: tuple[int, ...]
    memory_mib: int
    node_rank: int = 0
    nodes_num: int = 1
    master_addr: str = ""


class AllocationStatus(Wire, frozen=True):
    """Actual state of one allocation, as the agent sees it."""

    id: str
    state: str  # AllocState value
    exit_code: int | None = None
    reason: str = ""
    log_size: int = 0  # bytes in the agent's spool so far; final once the state is terminal
    started_at: float | None = None
    finished_at: float | None = None


class SyncRequest(Wire):
    agent_version: str
    inventory_generation: str
    inventory: Inventory | None = None  # sent only when the coordinator's generation differs
    allocations: list[AllocationStatus] = []
    desired_index: int = 0


class SyncResponse(Wire):
    host_id: str
    index: int
    allocations: list[AllocationSpec]
    inventory_generation: str  # the generation the coordinator holds; "" asks for the inventory
    poll_timeout_s: float
    sync_interval_s: float
    log_chunk_max_bytes: int


class LogAck(Wire):
    acked: int


# --- user API ----------------------------------------------------------------------------------------


class SubmitRequest(Wire):
    spec: TaskSpec


class JobView(Wire):
    id: str
    name: str
    status: str
    reason: str
    priority: int
    submitted_at: float
    spec: TaskSpec
    host: str | None = None
    gpus: tuple[int, ...] = ()
    blocks: tuple[int, ...] = ()
    allocation_id: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    stop_requested: bool = False


class HostView(Wire):
    id: str
    name: str
    status: str
    inventory: Inventory | None
    busy_blocks: int
    total_blocks: int
    last_seen: float | None
    simulated: bool


class ErrorBody(Wire):
    error: str
    field: str = ""


def generation_of(inventory: Inventory) -> str:
    """A stable content hash: the same hardware and config give the same generation across restarts."""
    import hashlib

    return hashlib.sha256(msgspec.json.encode(inventory)).hexdigest()[:16]
