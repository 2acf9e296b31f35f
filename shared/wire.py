"""Wire models of the agent ↔ coordinator protocol and of the user API (JSON over HTTPS).

Every struct here is sent as JSON by msgspec. Fields with defaults may be added later; a field is never
renamed or re-typed, so an older agent keeps talking to a newer coordinator.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

import msgspec
from msgspec import Meta

from shared import constants as C
from shared.arrays import MAX_ARRAY_CHARS
from shared.spec import TaskSpec

# Every integer that arrives is bounded, so none overflows SQLite's 64 bits or a file offset: an out-of-range
# value is a 400 naming its field, never a 500. The bounds sit far past any real host or job.
MAX_INDEX = 65_535  # GPU index, CPU core id, NUMA node, block index
MAX_GPUS = 1024  # devices on one host
MAX_BLOCKS = 4096  # blocks on one host (a CPU-only host gets one per core)
MAX_MIB = 2**40  # memory or disk in MiB: one exbibyte
MAX_LOG_BYTES = 2**40  # a log's offset or size: 1 TiB, inside every filesystem's file size limit
MAX_INDEX_VALUE = 2**62  # desired-state indices
MAX_TTL_S = 10 * 365 * 24 * 3600
MAX_HOSTNAME_CHARS = 253
MAX_IP_CHARS = 45  # the longest textual IPv6 address (an IPv4-mapped one)
# An IPv6 scope (`fe80::1%eth0`): an interface's name or number. Python takes any text after the `%`, spaces and
# newlines too, and an internal IP goes into its peers' ssh config, known_hosts and commands.
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}", re.ASCII)
MAX_TRANSPORT_CHARS = 300  # "bastion a → b → c", "proxy host:port", "direct"
MAX_LINK_ERROR_CHARS = 500  # one line: why the proxy or the SSH tunnel failed
MAX_HEALTH_REASON_CHARS = 200  # one line: why a device is unhealthy ("XID 79 (fallen off the bus)")
MAX_AGE_S = 10 * 365 * 24 * 3600.0
MAX_TEMPERATURE_C = 1000.0
MAX_POWER_W = 100_000.0  # one device's draw, far past any accelerator's
MAX_CLOCK_MHZ = 100_000.0
MAX_UUID_CHARS = 100
MAX_COUNT = 2**62  # an error counter
MAX_XIDS = 16  # XID events one reading carries
MAX_READINGS_AGE_S = 3600.0
MAX_QUOTA = 10**9  # a project's quota of GPUs or jobs: more is no limit at all, and must fit the store

Index = Annotated[int, Meta(ge=0, le=MAX_INDEX)]
Mib = Annotated[int, Meta(ge=0, le=MAX_MIB)]
LogBytes = Annotated[int, Meta(ge=0, le=MAX_LOG_BYTES)]
ExitCode = Annotated[int, Meta(ge=-(2**31), le=2**32 - 1)]  # negative: killed by that signal


class Wire(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base of every wire struct: unknown fields are ignored, so either side may be newer."""


class FrozenWire(msgspec.Struct, kw_only=True, forbid_unknown_fields=False, frozen=True):
    """A wire struct that is also a value (hashable): inventories and allocations."""


# --- inventory: what a host has, as the agent detected it ---------------------------------------------


class GpuDevice(FrozenWire, frozen=True):
    """One accelerator, with typed attributes in the manner of a Kubernetes DRA ResourceSlice device.

    Empty strings and empty tuples mean "not known on this host" (an older agent, a vendor without that notion).
    """

    index: Index  # the NVML / amdsmi / hl-smi index; CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA agree with it
    vendor: str  # "nvidia" | "amd" | "intel"
    name: str  # short product name: "H100", "A10G", "MI300X", "GAUDI2"
    memory_mib: Mib
    uuid: str = ""
    pci_bus_id: str = ""
    numa_node: Index | None = None
    simulated: bool = False
    compute_capability: str = ""  # NVIDIA's CUDA compute capability, "9.0"
    architecture: str = ""  # AMD's gfx target, "gfx942"
    serial: str = ""
    driver_version: str = ""
    cuda_version: str = ""  # the newest CUDA the NVIDIA driver supports, "12.4"
    render_node: str = ""  # AMD: the DRM render node of this GPU, "/dev/dri/renderD128"
    pcie_root: str = ""  # the PCIe host bridge above the device, as sysfs names it: "pci0000:15"
    links: Annotated[
        tuple[Index, ...], Meta(max_length=MAX_GPUS)
    ] = ()  # indices of the devices this one reaches over NVLink / XGMI (NVSwitch included)


class GpuMetrics(FrozenWire, frozen=True):
    """A live reading of one device; separate from the inventory, so it never changes the generation.
    None means the device or its library does not report that value. Agents send the latest with each sync
    (`SyncRequest.readings`); every value is bounded, as an enrolled host's word is checked like a user's."""

    index: Index
    utilization_pct: Annotated[float, Meta(ge=0, le=100)] | None = None
    memory_used_mib: Mib | None = None
    temperature_c: Annotated[float, Meta(ge=-273, le=MAX_TEMPERATURE_C)] | None = None
    power_w: Annotated[float, Meta(ge=0, le=MAX_POWER_W)] | None = None
    uuid: Annotated[str, Meta(max_length=MAX_UUID_CHARS)] = ""
    memory_total_mib: Mib | None = None
    sm_clock_mhz: Annotated[float, Meta(ge=0, le=MAX_CLOCK_MHZ)] | None = None
    ecc_corrected: Annotated[int, Meta(ge=0, le=MAX_COUNT)] | None = None  # volatile, since the driver loaded
    ecc_uncorrected: Annotated[int, Meta(ge=0, le=MAX_COUNT)] | None = None
    xids: Annotated[tuple[Annotated[int, Meta(ge=0, le=MAX_INDEX)], ...], Meta(max_length=MAX_XIDS)] = ()
    # XID events seen on the device since the agent started, oldest first, the latest MAX_XIDS


class Block(FrozenWire, frozen=True):
    """One equal share of a host: its GPUs (device indices), CPU core ids, memory and disk."""

    index: Index
    gpus: Annotated[tuple[Index, ...], Meta(max_length=MAX_GPUS)]
    cpus: Annotated[tuple[Index, ...], Meta(max_length=MAX_INDEX + 1)]
    memory_mib: Mib
    disk_mib: Mib
    numa_node: Index | None = None  # the NUMA node its GPUs and CPU cores share, when they share one


class GpuHealth(FrozenWire, frozen=True):
    """A device found unhealthy (agent/health.py): its blocks take no new work (coordinator/scheduling.py)."""

    index: Index
    reason: Annotated[str, Meta(min_length=1, max_length=MAX_HEALTH_REASON_CHARS)]


class Inventory(FrozenWire, frozen=True):
    hostname: Annotated[str, Meta(max_length=MAX_HOSTNAME_CHARS)]
    cpu_count: Annotated[int, Meta(ge=0, le=MAX_INDEX + 1)]
    memory_mib: Mib
    disk_mib: Mib
    gpus: Annotated[tuple[GpuDevice, ...], Meta(max_length=MAX_GPUS)]
    blocks: Annotated[tuple[Block, ...], Meta(max_length=MAX_BLOCKS)]
    runtimes: tuple[str, ...] = ("process",)
    simulated: bool = False
    warnings: tuple[str, ...] = ()
    volume_prefixes: tuple[str, ...] = ()  # host paths under these may be mounted into containers
    privileged_allowed: bool = False  # the agent's config lets jobs ask for privileged containers
    no_new_work: str = ""  # why the host takes no new work right now (its state dir is full, ...)
    # the address its peers reach it by, for multi-node jobs; "" when unknown (validate_inventory.py checks it)
    internal_ip: Annotated[str, Meta(max_length=MAX_IP_CHARS)] = ""
    # devices the agent finds unhealthy now; sent with the inventory like `no_new_work` (agent/sync.py)
    unhealthy: Annotated[tuple[GpuHealth, ...], Meta(max_length=MAX_GPUS)] = ()


def is_ip_address(text: str) -> bool:
    """Whether the text is an IPv4 or IPv6 address (an inventory's `internal_ip`, agent.yaml's), its scope
    (if any) an interface's name or number."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    _, scoped, scope = text.partition("%")
    return not scoped or _SCOPE_RE.fullmatch(scope) is not None


# --- sync: the one long poll -------------------------------------------------------------------------


class ArrayTask(FrozenWire, frozen=True):
    """Which task of which array an allocation runs, with the facts Slurm gives an array task."""

    array_id: str
    index: int
    count: int  # tasks in the array
    min_index: int
    max_index: int


class AllocationSpec(FrozenWire, frozen=True):
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
    nodes_ips: tuple[str, ...] = ()  # a multi-node job's hosts' internal IPs, by node rank
    ssh_port: int = 0  # a multi-node job's sshd port on every node (0: no ssh between its nodes)
    ssh_seed: str = ""  # hex: what every node derives the job's ssh keys from (agent/job_ssh.py); secret
    log_cap_bytes: int = 0  # the most log bytes the coordinator keeps of it (0: no cap); see agent/logcap.py
    array: ArrayTask | None = None  # set when the job is one task of an array


class AllocationStatus(FrozenWire, frozen=True):
    """Actual state of one allocation, as the agent sees it."""

    id: str
    state: str  # AllocState value
    exit_code: ExitCode | None = None
    reason: str = ""
    log_size: LogBytes = 0  # log bytes to ship so far (the spool, or its capped stream); final once terminal
    started_at: float | None = None
    finished_at: float | None = None


class SyncRequest(Wire):
    agent_version: str
    inventory_generation: str
    inventory: Inventory | None = None  # sent only when the coordinator's generation differs
    allocations: list[AllocationStatus] = []
    desired_index: Annotated[int, Meta(ge=0, le=MAX_INDEX_VALUE)] = 0
    transport: Annotated[str, Meta(max_length=MAX_TRANSPORT_CHARS)] = ""  # how the agent reaches us
    link_error: Annotated[str, Meta(max_length=MAX_LINK_ERROR_CHARS)] = ""  # its last proxy/tunnel failure
    link_error_age_s: Annotated[float, Meta(ge=0, le=MAX_AGE_S)] = 0.0
    # The latest device readings (taken every `SyncResponse.metrics_interval_s`), and how old they are now;
    # empty when none was taken since the last sync or the host has no accelerator.
    readings: Annotated[list[GpuMetrics], Meta(max_length=MAX_GPUS)] = []
    readings_age_s: Annotated[float, Meta(ge=0, le=MAX_READINGS_AGE_S)] = 0.0


class SyncResponse(Wire):
    host_id: str
    index: int
    allocations: list[AllocationSpec]
    inventory_generation: str  # the generation the coordinator holds; "" asks for the inventory
    poll_timeout_s: float
    sync_interval_s: float
    log_chunk_max_bytes: int
    metrics_interval_s: float = (
        C.METRICS_INTERVAL_S
    )  # how often the agent reads its devices (coordinator.yaml)


class LogAck(Wire):
    acked: int


# --- user API ----------------------------------------------------------------------------------------


class SubmitRequest(Wire):
    spec: TaskSpec


class ArraySubmitRequest(Wire):
    """`POST /api/v1/arrays`: one job per index of `array` (Slurm's syntax, shared/arrays.py), one spec."""

    spec: TaskSpec
    array: Annotated[str, Meta(max_length=MAX_ARRAY_CHARS)]


class ArraySummary(Wire):
    """An array folded into one view: how many of its tasks are in each status."""

    indices: str  # as submitted, without the `%N`: "1-1000"
    task_count: int
    task_limit: int = 0  # at most this many tasks placed at once; 0: no limit
    counts: dict[str, int] = {}  # status -> tasks


class ScheduleSummary(Wire):
    """A scheduled task (`schedule: {cron: ...}`) as one view: its lines, its next time, its last one."""

    cron: tuple[str, ...]  # UTC
    next_run_at: float | None  # None once stopped; may be just past while its beat comes
    last_note: str = ""  # what happened at the latest time: "ran nightly@2026-11-29T03:00", "skipped ..."
    runs: int = 0


class GpuSample(Wire):
    """One reading of one GPU as the coordinator received it: `at` is when it was read (coordinator clock)."""

    at: float
    reading: GpuMetrics


class JobGpuSeries(Wire, kw_only=True):
    """The readings of one GPU of a job, oldest first: the coordinator keeps the latest few minutes."""

    host: str  # the host's name
    gpu: int  # the device index on that host
    node: int = 0  # the node of a multi-node job
    uuid: str = ""
    samples: list[GpuSample] = []


class HostReadings(Wire):
    """`GET /api/v1/readings`: the latest readings of one host's GPUs, summed up for `gpuctl top` (a line a
    host, whatever the fleet's size): the mean utilization, memory used and in all, the hottest GPU, the power
    drawn. None: no GPU of the host reported that value."""

    host: str  # the host's name
    gpus: int = 0  # GPUs with a reading
    utilization_pct: float | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class JobMetricsView(Wire):
    """`GET /api/v1/jobs/{ref}/metrics`: the live readings of a job's GPUs (`gpuctl metrics JOB`, the console)."""

    job_id: str
    name: str
    status: str
    gpus: list[JobGpuSeries] = []


class AttemptView(Wire):
    """One attempt of a job (one allocation): where, when, and how it ended."""

    attempt: int
    allocation_id: str
    host: str
    status: str  # the allocation's state; `unknown` while its host is unreachable
    reason: str = ""
    exit_code: int | None = None
    placed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


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
    attempt: int = 0  # the latest attempt's number (0: never placed)
    attempts: list[AttemptView] = []  # first to last
    allocation_status: str = ""  # the latest attempt's state; `unknown` while its host is unreachable
    array: ArraySummary | None = None  # set on a whole array, folded: the id and name are the array's
    array_id: str = ""  # set on one task of an array, with its index
    array_index: int | None = None
    schedule: ScheduleSummary | None = None  # set on a schedule: the id and name are the schedule's
    estimated_start: float | None = None  # a waiting job's, when its backfill reservation gives one
    service_path: str = ""  # set on a service (an array of replicas): where the coordinator serves it


class HostView(Wire):
    id: str
    name: str
    status: str
    inventory: Inventory | None
    busy_blocks: int
    total_blocks: int
    last_seen: float | None
    simulated: bool
    warnings: tuple[str, ...] = ()  # what the coordinator found wrong with the host (a refused inventory)
    transport: str = ""  # how its agent reaches the coordinator: direct, proxy ..., bastion ...
    link_error: str = ""  # the last proxy or tunnel failure its agent reported
    link_error_at: float | None = None
    # devices held unhealthy: reported by the agent since the last `gpuctl hosts undrain` (their blocks idle)
    unhealthy: tuple[GpuHealth, ...] = ()


class HostAllocationView(Wire):
    """One allocation that holds blocks of a host, for `gpuctl hosts -v`."""

    allocation_id: str
    job_id: str
    job_name: str
    status: str  # the allocation's state: pending, pulling, running, ...
    blocks: tuple[int, ...]
    gpus: tuple[int, ...] = ()
    cpus: tuple[int, ...] = ()


class HostDetail(Wire):
    """`GET /api/v1/hosts/{name}`: the host as listed, plus which allocations hold which blocks."""

    host: HostView
    allocations: list[HostAllocationView] = []


class ErrorBody(Wire):
    error: str
    field: str = ""


def generation_of(inventory: Inventory) -> str:
    """A stable content hash: the same hardware and config give the same generation across restarts."""
    import hashlib

    return hashlib.sha256(msgspec.json.encode(inventory)).hexdigest()[:16]


# --- enrollment and identity ---------------------------------------------------------------------------


class EnrollRequest(Wire):
    token: str  # "<token id>.<secret>" from the join string
    csr: str  # PEM; the agent made the key and keeps it
    hostname: Annotated[str, Meta(max_length=MAX_HOSTNAME_CHARS)]


class EnrollResponse(Wire):
    host_id: str
    certificate: str  # PEM
    ca: str  # PEM


class RenewRequest(Wire):
    csr: str


class RenewResponse(Wire):
    certificate: str


class TokenCreate(Wire):
    fleet: str
    ttl_s: Annotated[int, Meta(ge=1, le=MAX_TTL_S)] = 3600
    uses: Annotated[int, Meta(ge=1, le=2**31)] | None = None
    labels: dict[str, str] = {}


class TokenCreated(Wire):
    id: str
    join_string: str
    expires_at: float


class ProjectCreate(Wire):
    name: str


class ProjectQuota(Wire):
    """`gpuctl project quota`: at most `gpus` GPUs and `jobs` jobs placed at once (None: no limit)."""

    name: str
    gpus: Annotated[int, Meta(ge=0, le=MAX_QUOTA)] | None = None
    jobs: Annotated[int, Meta(ge=0, le=MAX_QUOTA)] | None = None


class QueueEntry(Wire):
    """One waiting job of `gpuctl queue`, in the scheduler's order."""

    id: str
    name: str
    project: str
    status: str
    priority: int
    fair_share: float  # its project's factor: 1.0 used nothing lately; the higher goes first
    submitted_at: float
    reason: str
    estimated_start: float | None = None  # when its backfill reservation expects it to start, if known


class UserCreate(Wire):
    name: str
    project: str
    role: str = "member"


class UserCreated(Wire):
    name: str
    project: str
    role: str
    token: str


class FleetLimit(Wire):
    name: str
    projects: list[str] = []


class FleetSet(Wire):
    """`gpuctl fleet set`: dstack's fleet settings, plus ours; an absent one is left as it is."""

    name: str
    placement: str | None = None  # "cluster" (one fast network: multi-node jobs run here) or "any"
    preemption: bool | None = None  # higher-priority work may stop lower-priority work here


class FleetView(Wire):
    name: str
    placement: str
    preemption: bool
    projects: list[str]  # empty: open to every project
    hosts: int


class SecretSet(Wire):
    """`PUT /api/v1/secrets/{name}`: the value travels only in this body, never in a URL."""

    value: str
    project: str = ""  # an admin's choice; a member's own project otherwise


class SecretView(Wire):
    """A secret as every view shows it: its name and when it was last set, never its value."""

    name: str
    updated_at: float


class SshHost(Wire):
    """How `gpuctl ssh` logs in to a running dev environment: as `user`, pinning `host_key` (its sshd's)."""

    job_id: str
    user: str
    host_key: str  # "ssh-ed25519 AAAA..."


class AuditEntry(Wire):
    """One time someone reached into a job (`gpuctl exec`, `gpuctl ssh`): who, which job, when, and how it
    ended."""

    id: int
    at: float
    who: str
    project: str
    job_id: str
    node: int
    host_id: str
    kind: str  # "exec" or "ssh" (no command, no exit code: a session)
    command: list[str]
    ended_at: float | None = None  # None: still open, or cut by a coordinator restart
    exit_code: int | None = None
    error: str = ""
