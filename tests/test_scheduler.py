"""Placement (coordinator/scheduler.py): examples of the rules, then properties over random fleets and queues."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.blocks import CpuTopology, make_blocks
from coordinator.health import with_held
from coordinator.scheduler import HostCapacity, PendingJob, Placement, ScheduleResult, fit, schedule
from shared.spec import GpuRequest, Range, Resources, TaskSpec, parse_spec, validate_spec
from shared.wire import GpuDevice, GpuHealth, Inventory

GIB = 1024
# What the devices report (MiB), as NVML gives it: a little under the marketed size.
REPORTED_MIB = {"H100": 81559, "A100": 40960, "L4": 23034}
COMPUTE_CAPABILITY = {"H100": "9.0", "A100": "8.0", "L4": "8.9"}


@dataclass(frozen=True)
class Layout:
    """How a test host is wired. NVLink islands of `island` GPUs (0: no NVLink), in index order or
    `interleaved` (GPU i in island i % islands); PCIe host bridges shared by `per_root` GPUs (0: unknown);
    with `numa`, two NUMA nodes holding the first and second half of the GPUs and of the CPU ids."""

    island: int = 0
    interleaved: bool = False
    per_root: int = 0
    numa: bool = False

    def device(self, index: int, count: int, **attrs: Any) -> GpuDevice:
        islands = count // self.island if self.island else 0
        key = (lambda i: i % islands) if self.interleaved else (lambda i: i // self.island)
        links = tuple(j for j in range(count) if j != index and key(j) == key(index)) if self.island else ()
        return GpuDevice(
            index=index,
            links=links,
            pcie_root=f"pci0000:{index // self.per_root:02x}" if self.per_root else "",
            numa_node=index * 2 // count if self.numa else None,
            **attrs,
        )

    def cpu_topology(self, cpu_count: int) -> CpuTopology:
        if not self.numa or cpu_count < 2:
            return CpuTopology()
        return CpuTopology(numa_of={c: c * 2 // cpu_count for c in range(cpu_count)})


def inventory(
    name: str = "h1",
    gpus: int | Sequence[str] = 8,
    blocks: str | int = "auto",
    cpus: int | None = None,
    memory_gib: int = 2048,
    disk_gib: int = 8000,
    runtimes: tuple[str, ...] = ("process", "docker"),
    layout: Layout = Layout(),
) -> Inventory:
    """A host as the agent would report it: `gpus` is a count of H100s or a list of model names."""
    models = ["H100"] * gpus if isinstance(gpus, int) else list(gpus)
    devices = tuple(
        layout.device(
            i,
            len(models),
            vendor="nvidia",
            name=m,
            memory_mib=REPORTED_MIB[m],
            uuid=f"GPU-{name}-{i}",
            compute_capability=COMPUTE_CAPABILITY[m],
        )
        for i, m in enumerate(models)
    )
    cpu_count = cpus if cpus is not None else 8 * max(len(devices), 1)
    cut = make_blocks(
        devices, range(cpu_count), memory_gib * GIB, disk_gib * GIB, blocks, layout.cpu_topology(cpu_count)
    )
    return Inventory(
        hostname=name,
        cpu_count=cpu_count,
        memory_mib=memory_gib * GIB,
        disk_mib=disk_gib * GIB,
        gpus=devices,
        blocks=cut,
        runtimes=runtimes,
    )


def host(name: str = "h1", busy: Sequence[int] = (), ready: bool = True, **kwargs: Any) -> HostCapacity:
    return HostCapacity(f"id-{name}", name, inventory(name, **kwargs), frozenset(busy), ready)


def job(job_id: str, resources: str = "", *, seq: int = 0, priority: int = 0, image: str = "") -> PendingJob:
    """A job parsed from a task file, like the CLI sends it: `resources` is the YAML flow mapping's body."""
    text = textwrap.dedent(f"""\
        type: task
        commands: [python train.py]
        resources: {{{resources}}}
        priority: {priority}
        """)
    if image:
        text += f"image: {image}\n"
    spec = parse_spec(text)
    return PendingJob(job_id, spec, seq, spec.priority)


def only_placement(result: ScheduleResult, job_id: str) -> Placement:
    (placement,) = [p for p in result.placements if p.job_id == job_id]
    return placement


# --- how many blocks a job takes -------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_auto_blocks_one_per_gpu(count: int) -> None:
    result = schedule([job("j", f"gpu: {count}")], [host()])

    placement = only_placement(result, "j")
    assert len(placement.blocks) == count
    assert len(placement.gpus) == count
    assert len(set(placement.gpus)) == count
    assert result.pending == {}


def test_placement_carries_the_blocks_devices_cpus_and_memory() -> None:
    h = host(blocks=4)  # blocks of 2 GPUs, 16 cores, 512 GiB

    placement = only_placement(schedule([job("j", "gpu: 4")], [h]), "j")

    chosen = [h.inventory.blocks[b] for b in placement.blocks]
    assert placement.host_id == "id-h1"
    assert placement.gpus == tuple(g for b in chosen for g in b.gpus)
    assert placement.cpus == tuple(c for b in chosen for c in b.cpus)
    assert len(placement.cpus) == 32
    assert placement.memory_mib == 1024 * GIB


def test_gpu_count_maximum_binds_with_blocks_of_two() -> None:
    # `gpu: 1` is exactly one GPU: a block of 2 would show the job a GPU it did not ask for.
    assert fit(job("j", "gpu: 1").spec, inventory(blocks=4)) == (
        "is cut in blocks of 2 GPUs; 1 GPU is not a whole number of blocks"
    )
    result = schedule([job("exact", "gpu: 1"), job("range", "gpu: 1..2", seq=1)], [host(blocks=4)])

    assert "blocks of 2" in result.pending["exact"]
    assert "can ever fit" in result.pending["exact"]
    placement = only_placement(result, "range")
    assert len(placement.blocks) == 1
    assert len(placement.gpus) == 2


def test_a_count_that_is_no_whole_number_of_blocks_never_fits() -> None:
    hosts = [host("a", blocks=2), host("b", blocks=2)]  # blocks of 4 GPUs

    result = schedule([job("j", "gpu: 3")], hosts)

    assert result.placements == []
    assert "blocks of 4" in result.pending["j"]
    assert result.pending["j"].startswith("no host can ever fit this job")


@pytest.mark.parametrize("blocks", ["auto", 2])
def test_more_gpus_than_any_host_has(blocks: str | int) -> None:
    result = schedule([job("j", "gpu: 16")], [host("a", blocks=blocks), host("b", blocks=blocks)])

    reason = result.pending["j"]
    assert "can ever fit" in reason
    assert "16" in reason
    assert result.placements == []


def test_a_busy_host_gives_the_free_count() -> None:
    busy_host = host(busy=range(7))  # one H100 left

    result = schedule([job("j", "gpu: H100:2")], [busy_host])

    assert result.pending["j"] == "no host with 2 free H100 blocks; largest free: 1"
    result = schedule([job("j", "gpu: 2")], [busy_host])
    assert re.fullmatch(r"no host with 2 free blocks; largest free: 1", result.pending["j"])


def test_jobs_placed_earlier_in_the_pass_take_their_blocks() -> None:
    result = schedule([job("a", "gpu: 6", seq=1), job("b", "gpu: 4", seq=2)], [host()])

    assert len(only_placement(result, "a").blocks) == 6
    assert result.pending["b"] == "no host with 4 free blocks; largest free: 2"


# --- order -----------------------------------------------------------------------------------------------


def test_priority_beats_fifo() -> None:
    jobs = [job("old", "gpu: 8", seq=1, priority=10), job("urgent", "gpu: 8", seq=2, priority=90)]

    result = schedule(jobs, [host()])

    assert [p.job_id for p in result.placements] == ["urgent"]
    assert set(result.pending) == {"old"}


def test_fifo_among_equal_priority() -> None:
    # Given in reverse: the order comes from seq, not from the list.
    jobs = [job(f"j{seq}", "gpu: 4", seq=seq, priority=50) for seq in (3, 2, 1)]

    result = schedule(jobs, [host()])

    assert [p.job_id for p in result.placements] == ["j1", "j2"]
    assert set(result.pending) == {"j3"}


# --- what matches --------------------------------------------------------------------------------------------


def test_another_model_never_fits_and_the_reason_names_the_hosts_gpus() -> None:
    result = schedule([job("j", "gpu: A100")], [host("dgx1")])

    reason = result.pending["j"]
    assert "can ever fit" in reason
    assert "dgx1" in reason
    assert "8xH100 (80GB)" in reason
    assert "A100" in reason


def test_memory_matches_on_whole_gib() -> None:
    # An H100 80GB reports 81559 MiB; `80GB` must still match it.
    placement = only_placement(schedule([job("j", "gpu: H100:80GB")], [host()]), "j")
    assert len(placement.gpus) == 1

    assert "can ever fit" in schedule([job("j", "gpu: 40GB")], [host()]).pending["j"]
    assert len(only_placement(schedule([job("j", "gpu: 70GB..:2")], [host()]), "j").gpus) == 2


def test_a_mixed_host_gives_only_matching_gpus() -> None:
    mixed = host(gpus=["A100", "A100", "L4", "L4"], busy=[2])

    result = schedule([job("j", "gpu: L4")], [mixed])
    placement = only_placement(result, "j")
    assert placement.blocks == (3,)
    assert placement.gpus == (3,)

    result = schedule([job("j", "gpu: L4:2")], [mixed])
    assert result.pending["j"] == "no host with 2 free L4 blocks; largest free: 1"


def test_an_optional_gpu_must_still_be_the_model_asked_for() -> None:
    # `A100:0..1`: an A100 if there is one, else none; never an H100, which the job would see all the same.
    result = schedule([job("j", "gpu: A100:0..1")], [host("dgx1")])
    assert "can ever fit" in result.pending["j"]
    assert "none matching 0..1 A100 GPU" in result.pending["j"]

    hosts = [host("dgx1"), host("cpu-only", gpus=0, cpus=4)]
    placement = only_placement(schedule([job("j", "gpu: A100:0..1")], hosts), "j")
    assert (placement.host_id, placement.gpus) == ("id-cpu-only", ())


def test_a_job_that_asks_for_no_gpu_takes_its_blocks_share_but_none_of_their_gpus() -> None:
    h = host(blocks=4)  # blocks of 2 GPUs, 16 cores, 512 GiB

    placement = only_placement(schedule([job("j", "cpu: 4")], [h]), "j")

    (block,) = [h.inventory.blocks[b] for b in placement.blocks]
    assert placement.gpus == ()
    assert (placement.cpus, placement.memory_mib) == (block.cpus, block.memory_mib)


def test_a_job_that_asks_for_no_gpu_prefers_a_host_without_gpus_over_a_tighter_one() -> None:
    tight_gpu_host = host("dgx", busy=range(7))  # one free block
    cpu_host = host("cpu", gpus=0, cpus=8)  # eight free blocks
    hosts = [tight_gpu_host, cpu_host]

    assert only_placement(schedule([job("j", "cpu: 1")], hosts), "j").host_id == "id-cpu"
    assert only_placement(schedule([job("j", "gpu: 1")], hosts), "j").host_id == "id-dgx"
    # Among GPU hosts alone, the tightest fit still wins.
    roomy_gpu_host = host("roomy")
    assert only_placement(schedule([job("j")], [roomy_gpu_host, tight_gpu_host]), "j").host_id == "id-dgx"


def test_cpu_or_memory_that_takes_too_many_gpus_is_the_reason_given() -> None:
    # 8 cores per block: 16 cores take 2 blocks, so 2 GPUs, for a job that asks exactly 1.
    reason = schedule([job("j", "gpu: 1, cpu: 16..")], [host("dgx1")]).pending["j"]

    assert reason.startswith("no host can ever fit this job: dgx1 has blocks of 1 GPU, 8 CPU, 256GB memory")
    assert "CPU, memory or disk minimum takes 2 blocks" in reason
    assert "not a whole number of blocks" not in reason
    assert len(only_placement(schedule([job("j", "gpu: 1..2, cpu: 16..")], [host()]), "j").gpus) == 2


def test_an_image_needs_a_docker_host() -> None:
    hosts = [host("a-plain", runtimes=("process",)), host("z-docker")]

    result = schedule([job("j", "gpu: 1", image="busybox:latest")], hosts)
    assert only_placement(result, "j").host_id == "id-z-docker"

    result = schedule([job("j", "gpu: 1", image="busybox:latest")], hosts[:1])
    assert "can ever fit" in result.pending["j"]
    assert "has no docker runtime" in result.pending["j"]

    # A plain-process job may use the host without docker.
    assert only_placement(schedule([job("j", "gpu: 1")], hosts[:1]), "j").host_id == "id-a-plain"


def test_cpu_and_memory_minimums_take_more_blocks() -> None:
    cpu_host = host(gpus=0, cpus=16, memory_gib=64)  # auto: 16 blocks of 1 core, 4 GiB

    placement = only_placement(schedule([job("j", "cpu: 4.., memory: 10GB..")], [cpu_host]), "j")

    assert len(placement.blocks) == 4
    assert placement.gpus == ()
    assert "can ever fit" in schedule([job("j", "cpu: 32..")], [cpu_host]).pending["j"]
    assert "has no GPU" in schedule([job("j", "gpu: 1")], [cpu_host]).pending["j"]


# --- which host ----------------------------------------------------------------------------------------------


def test_tightest_fit_wins() -> None:
    hosts = [host("a-empty"), host("b-almost-full", busy=range(6)), host("c-half", busy=range(4))]

    result = schedule([job("j", "gpu: 2")], hosts)

    placement = only_placement(result, "j")
    assert placement.host_id == "id-b-almost-full"
    assert placement.blocks == (6, 7)


def test_equal_fit_goes_by_host_name() -> None:
    result = schedule([job("j", "gpu: 8")], [host("node-b"), host("node-a")])

    assert only_placement(result, "j").host_id == "id-node-a"


def test_no_hosts() -> None:
    assert schedule([job("j", "gpu: 1")], []).pending == {"j": "no hosts registered"}


def test_a_host_that_is_not_ready_is_not_used_but_counts_for_ever_fitting() -> None:
    down = host("big", ready=False)

    result = schedule([job("j", "gpu: 8")], [down, host("small", gpus=4)])

    assert result.placements == []
    assert result.pending["j"] == "the hosts that fit this job are not ready: big"
    assert "can ever fit" not in result.pending["j"]
    # A job that fits nowhere still says so.
    assert "can ever fit" in schedule([job("j", "gpu: 16")], [down]).pending["j"]


# --- properties ----------------------------------------------------------------------------------------------

MODELS = tuple(REPORTED_MIB)
# Strategies built once: building them inside the draws costs more than the scheduler itself.
MODEL = st.sampled_from(MODELS)
GPU_COUNT = st.sampled_from((0, 1, 2, 4, 8))
CORES_PER_GPU = st.sampled_from((1, 2, 4))
MEMORY_GIB_PER_CORE = st.sampled_from((2, 8))
DISK_GIB = st.sampled_from((100, 1000))
RUNTIMES = st.sampled_from((("process",), ("process", "docker")))
BIT_MASK = st.integers(0, 2**32 - 1)
GPU_MEMORY = st.sampled_from((None, Range(80 * GIB, 80 * GIB), Range(40 * GIB, None), Range(None, 40 * GIB)))
CPU_MIN = st.sampled_from((None, Range(2, None), Range(8, None), Range(40, None)))
MEMORY_MIN = st.sampled_from((None, Range(16 * GIB, None), Range(128 * GIB, None)))
IMAGE = st.sampled_from((None, "busybox:latest"))
PRIORITY = st.sampled_from((0, 50, 100))
CAPABILITY = st.sampled_from(
    (None, None, Range(9.0, None), Range(8.0, 8.9), Range(8.9, 8.9), Range(10.0, None))
)
LAYOUT = st.builds(
    Layout,
    island=st.sampled_from((0, 2, 4)),
    interleaved=st.booleans(),
    per_root=st.sampled_from((0, 1, 2)),
    numa=st.booleans(),
)


def _layout(layout: Layout, gpu_count: int) -> Layout:
    """The drawn layout, without NVLink islands when their size does not divide the GPU count."""
    if layout.island and gpu_count % layout.island:
        return Layout(per_root=layout.per_root, numa=layout.numa)
    return layout


@st.composite
def hosts_strategy(draw: st.DrawFn) -> list[HostCapacity]:
    """1-4 hosts of 0/1/2/4/8 GPUs (sometimes two models), cut into blocks by a divisor, some blocks busy."""
    hosts = []
    for n in range(draw(st.integers(1, 4))):
        gpu_count = draw(GPU_COUNT)
        first, second = draw(MODEL), draw(MODEL)
        split = draw(st.integers(0, gpu_count))  # a mixed host when 0 < split < count
        models = [first] * split + [second] * (gpu_count - split)
        cpus = max(gpu_count, 1) * draw(CORES_PER_GPU)
        divisors = tuple(d for d in range(1, cpus + 1) if cpus % d == 0 and gpu_count % max(d, 1) == 0)
        blocks = draw(st.sampled_from(("auto", *divisors)))
        name = f"h{n}"
        inv = inventory(
            name,
            models,
            blocks,
            cpus=cpus,
            memory_gib=cpus * draw(MEMORY_GIB_PER_CORE),
            disk_gib=draw(DISK_GIB),
            runtimes=draw(RUNTIMES),
            layout=_layout(draw(LAYOUT), gpu_count),
        )
        mask = draw(BIT_MASK)
        busy = frozenset(b.index for b in inv.blocks if mask >> b.index & 1)
        hosts.append(HostCapacity(f"id-{name}", name, inv, busy, draw(st.booleans())))
    return hosts


@st.composite
def gpu_strategy(draw: st.DrawFn) -> GpuRequest | None:
    """No GPU, or a count range (min may be 0, max open) with optional model names and per-GPU memory."""
    if draw(st.integers(0, 4)) == 0:
        return None
    low = draw(st.integers(0, 9))
    high = draw(st.one_of(st.none(), st.integers(low, 16)))
    names = tuple(sorted(draw(st.sets(MODEL, max_size=2))))
    capability = draw(CAPABILITY)
    vendor = "nvidia" if capability is not None else None
    return GpuRequest(
        count=Range(low, high),
        vendor=vendor,
        names=names,
        memory_mib=draw(GPU_MEMORY),
        compute_capability=capability,
    )


GPU_REQUEST = gpu_strategy()


@st.composite
def jobs_strategy(draw: st.DrawFn) -> list[PendingJob]:
    jobs = []
    for seq in range(draw(st.integers(1, 8))):
        resources = Resources(gpu=draw(GPU_REQUEST), cpu=draw(CPU_MIN), memory_mib=draw(MEMORY_MIN))
        priority = draw(PRIORITY)
        spec = validate_spec(
            TaskSpec(commands=("true",), image=draw(IMAGE), resources=resources, priority=priority)
        )
        jobs.append(PendingJob(f"j{seq}", spec, seq, priority))
    return jobs


def _device_ok(gpu: GpuRequest, device: GpuDevice) -> bool:
    """The request's model, memory and compute capability on one device (memory on whole GiB or GB)."""
    names = {n.lower() for n in gpu.names}
    readings_gib = (round(device.memory_mib / 1024), round(device.memory_mib * 2**20 / 10**9))  # GiB or GB
    capability = gpu.compute_capability
    return (
        (gpu.vendor is None or device.vendor == gpu.vendor)
        and (not names or device.name.lower() in names)
        and (gpu.memory_mib is None or any(gpu.memory_mib.contains(g * 1024) for g in readings_gib))
        and (capability is None or capability.contains(float(device.compute_capability)))
    )


def _satisfies(spec: TaskSpec, inv: Inventory, block_ids: Sequence[int]) -> bool:
    """Written apart from the scheduler: would these blocks of this host be a valid placement for the job?"""
    runtime = "docker" if spec.image else "process"
    if not block_ids or runtime not in inv.runtimes:
        return False
    by_index = {g.index: g for g in inv.gpus}
    blocks = [inv.blocks[b] for b in block_ids]
    devices = [by_index[g] for b in blocks for g in b.gpus]
    res = spec.resources
    if res.gpu is not None:
        if not res.gpu.count.contains(len(devices)):
            return False
        if not all(_device_ok(res.gpu, d) for d in devices):
            return False
    for wanted, have in (
        (res.cpu, sum(len(b.cpus) for b in blocks)),
        (res.memory_mib, sum(b.memory_mib for b in blocks)),
        (res.disk_mib, sum(b.disk_mib for b in blocks)),
    ):
        if wanted is not None and wanted.min is not None and have < wanted.min:
            return False
    return True


def _could_take(spec: TaskSpec, inv: Inventory, free: Sequence[int]) -> bool:
    """Is there any set of the `free` blocks that satisfies the job? Blocks are equal, so only the count of
    blocks (taken among those whose devices all match) matters."""
    matching = [b for b in free if _satisfies_devices(spec, inv, b)]
    return any(_satisfies(spec, inv, matching[:k]) for k in range(1, len(matching) + 1))


def _satisfies_devices(spec: TaskSpec, inv: Inventory, block_id: int) -> bool:
    gpu = spec.resources.gpu
    by_index = {g.index: g for g in inv.gpus}
    return gpu is None or all(_device_ok(gpu, by_index[g]) for g in inv.blocks[block_id].gpus)


def check_each_job_once(result: ScheduleResult, hosts: list[HostCapacity], jobs: list[PendingJob]) -> None:
    placed = [p.job_id for p in result.placements]
    assert len(placed) == len(set(placed))
    assert set(placed) | set(result.pending) == {j.job_id for j in jobs}
    assert not set(placed) & set(result.pending)
    assert all(reason for reason in result.pending.values())


def check_no_overbooking(result: ScheduleResult, hosts: list[HostCapacity], jobs: list[PendingJob]) -> None:
    """(a) and (b): only free blocks of ready hosts, none twice, and so no GPU device given twice."""
    by_id = {h.host_id: h for h in hosts}
    taken: dict[str, set[int]] = {h.host_id: set() for h in hosts}
    devices: set[tuple[str, int]] = set()
    for p in result.placements:
        h = by_id[p.host_id]
        assert h.ready
        assert len(p.blocks) == len(set(p.blocks))
        for b in p.blocks:
            assert 0 <= b < len(h.inventory.blocks)
            assert b not in h.busy_blocks
            assert b not in taken[h.host_id]
            taken[h.host_id].add(b)
        busy_gpus = {g for b in h.busy_blocks for g in h.inventory.blocks[b].gpus}
        assert not busy_gpus & set(p.gpus)
        for g in p.gpus:
            assert (p.host_id, g) not in devices
            devices.add((p.host_id, g))
    for host_id, blocks in taken.items():
        assert len(blocks) + len(by_id[host_id].busy_blocks) <= len(by_id[host_id].inventory.blocks)


def check_placements_satisfy_jobs(
    result: ScheduleResult, hosts: list[HostCapacity], jobs: list[PendingJob]
) -> None:
    """(c): the GPU count range, model and memory, the CPU/memory/disk minimums and the runtime."""
    by_id = {h.host_id: h for h in hosts}
    specs = {j.job_id: j.spec for j in jobs}
    for p in result.placements:
        spec, inv = specs[p.job_id], by_id[p.host_id].inventory
        blocks_gpus = tuple(g for b in p.blocks for g in inv.blocks[b].gpus)
        assert p.gpus == (blocks_gpus if spec.resources.gpu is not None else ())
        gpu = spec.resources.gpu
        if gpu is not None:
            assert gpu.count.min is None or gpu.count.min <= len(p.gpus)
            assert gpu.count.max is None or len(p.gpus) <= gpu.count.max
        assert _satisfies(spec, inv, p.blocks), (p, spec.resources)
        # The fewest blocks that do: one block less would not satisfy the job.
        assert len(p.blocks) == 1 or not _satisfies(spec, inv, p.blocks[:-1])


def check_never_means_never(
    result: ScheduleResult, hosts: list[HostCapacity], jobs: list[PendingJob]
) -> None:
    """(d): a job told it can never fit does not fit on any host, even one with every block free; a job
    given any other reason does fit on some host once it is empty."""
    for j in jobs:
        if j.job_id not in result.pending:
            continue
        reason = result.pending[j.job_id]
        empty_fit = [
            h.name for h in hosts if _could_take(j.spec, h.inventory, range(len(h.inventory.blocks)))
        ]
        if "can ever fit" in reason or reason == "no hosts registered":
            assert empty_fit == [], (reason, j.spec.resources)
        else:
            assert empty_fit, (reason, j.spec.resources)


def check_no_idle_capacity(result: ScheduleResult, hosts: list[HostCapacity], jobs: list[PendingJob]) -> None:
    """(e): free blocks only shrink during a pass, so what is still free at its end was free for every job:
    no ready host may still have enough free matching blocks for a job left pending."""
    used: dict[str, set[int]] = {h.host_id: set(h.busy_blocks) for h in hosts}
    for p in result.placements:
        used[p.host_id].update(p.blocks)
    for j in jobs:
        if j.job_id not in result.pending:
            continue
        for h in hosts:
            if h.ready:
                free = [b.index for b in h.inventory.blocks if b.index not in used[h.host_id]]
                assert not _could_take(j.spec, h.inventory, free), (h.name, result.pending[j.job_id])


def _closeness(inv: Inventory) -> list[dict[int, object]]:
    """Written apart from the scheduler: each block's NVLink island (the GPU's set of itself and its links,
    which the test layouts make cliques), PCIe root and NUMA node, where all its GPUs share one."""
    by_index = {g.index: g for g in inv.gpus}
    levels: list[dict[int, object]] = [{}, {}, {}]
    for b in inv.blocks:
        devices = [by_index[g] for g in b.gpus]
        for level, key in zip(
            levels,
            (
                lambda d: frozenset((d.index, *d.links)) if d.links else None,
                lambda d: d.pcie_root or None,
                lambda d: d.numa_node,
            ),
            strict=True,
        ):
            keys = {key(d) for d in devices}
            if devices and len(keys) == 1 and None not in keys:
                level[b.index] = keys.pop()
    return levels


def check_closest_blocks(result: ScheduleResult, hosts: list[HostCapacity], jobs: list[PendingJob]) -> None:
    """(f): replaying the pass, at the first level (NVLink island, PCIe root, NUMA node) where some group of
    the host's free matching blocks can hold the job, the job's blocks all come from one such group, and
    from the one with the fewest free blocks (best fit)."""
    by_id = {h.host_id: h for h in hosts}
    specs = {j.job_id: j.spec for j in jobs}
    used: dict[str, set[int]] = {h.host_id: set(h.busy_blocks) for h in hosts}
    for p in result.placements:
        inv, k = by_id[p.host_id].inventory, len(p.blocks)
        free = [b.index for b in inv.blocks if b.index not in used[p.host_id]]
        eligible = [b for b in free if _satisfies_devices(specs[p.job_id], inv, b)]
        for level in _closeness(inv):
            groups: dict[object, set[int]] = {}
            for b in eligible:
                if b in level:
                    groups.setdefault(level[b], set()).add(b)
            fitting = [g for g in groups.values() if len(g) >= k]
            if fitting:
                (home,) = [g for g in fitting if set(p.blocks) <= g] or [set()]
                assert home, (p, fitting)
                assert len(home) == min(len(g) for g in fitting), (p, fitting)
                break
        used[p.host_id].update(p.blocks)


@settings(max_examples=400, deadline=None)
@given(hosts=hosts_strategy(), jobs=jobs_strategy())
def test_schedule_properties(hosts: list[HostCapacity], jobs: list[PendingJob]) -> None:
    result = schedule(jobs, hosts)

    check_each_job_once(result, hosts, jobs)
    check_no_overbooking(result, hosts, jobs)
    check_placements_satisfy_jobs(result, hosts, jobs)
    check_never_means_never(result, hosts, jobs)
    check_no_idle_capacity(result, hosts, jobs)
    check_closest_blocks(result, hosts, jobs)


@settings(max_examples=150, deadline=None)
@given(hosts=hosts_strategy(), jobs=jobs_strategy())
def test_fit_agrees_with_an_empty_host(hosts: list[HostCapacity], jobs: list[PendingJob]) -> None:
    """`fit` gives the fewest blocks that satisfy the job on the whole host, or a reason iff none do."""
    for h in hosts:
        for j in jobs:
            need = fit(j.spec, h.inventory)
            possible = _could_take(j.spec, h.inventory, range(len(h.inventory.blocks)))
            assert isinstance(need, int) == possible, (need, j.spec.resources, h.name)
            if isinstance(need, int):
                matching = [
                    b.index for b in h.inventory.blocks if _satisfies_devices(j.spec, h.inventory, b.index)
                ]
                assert _satisfies(j.spec, h.inventory, matching[:need])
                assert need == 1 or not _satisfies(j.spec, h.inventory, matching[: need - 1])


def test_the_oracle_rejects_wrong_placements() -> None:
    # The oracle above must itself reject a wrong placement, or the properties prove nothing.
    inv = inventory(blocks=4)
    spec = job("j", "gpu: 1").spec
    assert not _satisfies(spec, inv, [0])
    assert _satisfies(job("j", "gpu: 1..2").spec, inv, [0])
    assert not _satisfies(job("j", "gpu: A100:2").spec, inv, [0])
    assert not _could_take(job("j", "gpu: 3").spec, inventory(blocks=2), range(2))


# --- reasons name every condition of the request -------------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "described"),
    [
        ("gpu: 16GB..24GB", "none matching 1 GPU with 16GB..24GB memory"),
        ("gpu: {name: H100, memory: 96GB..}", "none matching 1 H100 GPU with 96GB.. memory"),
        ("gpu: {memory: ..40GB, count: 2}", "none matching 2 GPUs with ..40GB memory"),
        ("gpu: A100:80GB:2", "none matching 2 A100 GPUs with 80GB memory"),
        ("gpu: {vendor: amd, count: 1}", "none matching 1 amd GPU"),
        (
            "gpu: {vendor: nvidia, name: [H100, A100], memory: 96GB.., compute_capability: 9.0.., count: 2}",
            "none matching 2 H100/A100 GPUs with 96GB.. memory and compute capability 9.0..",
        ),
    ],
)
def test_a_pending_reason_names_every_condition_of_the_request(request_text: str, described: str) -> None:
    result = schedule([job("j", request_text)], [host()])

    assert result.pending["j"] == f"no host can ever fit this job: h1 has 8xH100 (80GB), {described}"


# --- multi-node jobs -------------------------------------------------------------------------------------


def gang(job_id: str, nodes: int, resources: str = "gpu: 8", seq: int = 0) -> PendingJob:
    """A multi-node job (the spec refuses `nodes` above 1 until the coordinator runs them: built directly)."""
    spec = job(job_id, resources, seq=seq).spec
    return PendingJob(job_id, msgspec.structs.replace(spec, nodes=nodes), seq)


def node(name: str, busy: Sequence[int] = (), fleet: str = "rack") -> HostCapacity:
    """A host of a fleet with `placement: cluster`, where multi-node jobs run."""
    return replace(host(name, busy), fleet=fleet, cluster=True)


def test_a_multi_node_job_takes_every_node_at_once_with_its_rank() -> None:
    result = schedule([gang("g", 2)], [node("a"), node("b"), node("c", busy=[0])])

    assert [(p.node, p.host_id, len(p.gpus)) for p in result.placements] == [(0, "id-a", 8), (1, "id-b", 8)]


def test_a_multi_node_job_holds_nothing_while_one_host_is_busy_and_smaller_jobs_go_on() -> None:
    hosts = [node("a"), node("b", busy=[0])]

    result = schedule([gang("g", 2, seq=1), job("small", "gpu: 1", seq=2)], hosts)

    assert [p.job_id for p in result.placements] == ["small"]  # nothing of g, and a is free to others
    assert result.pending == {"g": "waiting for 2 hosts of one fleet with room at once; now 1"}


def test_a_multi_node_job_stays_within_one_fleet() -> None:
    hosts = [node("a"), node("b", fleet="other"), node("c", fleet="other")]

    result = schedule([gang("g", 2)], hosts)
    assert {p.host_id for p in result.placements} == {"id-b", "id-c"}
    result = schedule([gang("g", 3)], hosts)
    assert result.pending == {"g": "no fleet has 3 hosts that can fit this job; most: 2 in fleet other"}


def test_a_multi_node_job_runs_only_in_a_cluster_fleet_and_the_reason_says_how_to_make_one() -> None:
    anywhere = [host("a"), host("b"), replace(host("c", gpus=["L4"]), fleet="small")]

    result = schedule([gang("g", 2, "gpu: H100:8"), job("one", "gpu: 8")], anywhere)

    assert [p.job_id for p in result.placements] == ["one"]  # a single-node job runs in any fleet
    assert result.pending == {
        "g": "no fleet with placement: cluster fits this multi-node job; hosts of fleet default do: "
        "gpuctl fleet set default --placement cluster"
    }
    clustered = [replace(h, cluster=True) if h.fleet == "default" else h for h in anywhere]
    result = schedule([gang("g", 2, "gpu: H100:8")], clustered)
    assert {p.host_id for p in result.placements} == {"id-a", "id-b"}


def test_a_fleet_that_cannot_hold_a_multi_node_job_is_not_named_as_one_to_make_a_cluster() -> None:
    hosts = [host("a", gpus=["L4"]), host("b", gpus=["L4"])]

    result = schedule([gang("g", 2, "gpu: H100:8")], hosts)

    assert result.pending["g"] == (
        "no host can ever fit this job: a has 1xL4 (24GB), none matching 8 H100 GPUs; "
        "b has 1xL4 (24GB), none matching 8 H100 GPUs"
    )


def test_a_reason_names_a_few_unhealthy_gpus_and_counts_the_rest() -> None:
    """Held unhealthy GPUs are named in the reasons of the jobs they keep waiting, a few of them: at a fleet's
    size (or from an agent marking its every device) every pending job's reason would list them all."""
    sick = tuple(GpuHealth(index=i, reason=f"XID 79 (fallen off the bus) #{i}") for i in range(7))
    hosts = [with_held(host(f"h{n}"), sick[:1]) for n in range(5)] + [with_held(host("h5"), sick)]

    reason = schedule([job("j", "gpu: 8")], hosts).pending["j"]

    assert reason.startswith("no host with 8 free blocks; largest free: 7; h0: GPU 0 unhealthy"), reason
    assert reason.count("unhealthy") == 3 and reason.endswith("(and 3 more hosts)"), reason
    sick_host = schedule([job("j", "gpu: 8")], hosts[5:]).pending["j"]
    assert sick_host.count("unhealthy") == 3 and sick_host.endswith("(and 4 more GPUs)"), sick_host
