"""`gpuctl hosts -v HOST`: every device and its attributes, every block and the job holding it, and the
topology as the matrix `nvidia-smi topo -m` users know. Pure rendering; `--json` bypasses it."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.render import ago, health_lines, link_lines, plain
from cli.text import clean
from shared.topology import relation_word
from shared.units import format_mib
from shared.wire import GpuDevice, HostAllocationView, HostDetail, Inventory

LEGEND = (
    "NV = NVLink (direct or through an NVSwitch), XGMI = AMD Infinity Fabric, PHB = same PCIe host bridge, "
    "NODE = same NUMA node, SYS = across NUMA nodes or unknown"
)


def host_detail(detail: HostDetail, width: int = 200) -> RenderableType:
    """The whole page for one host, `width` columns wide at most (a narrow terminal gets the devices
    table in parts)."""
    inv = detail.host.inventory
    parts: list[RenderableType] = [_heading(detail)]
    if detail.host.transport:
        parts.append(plain(f"reaches the coordinator: {detail.host.transport}"))
    parts += [Text(clean(line), style="bold yellow") for line in link_lines(detail.host)]
    parts += [Text(f"warning: {w}", style="bold yellow") for w in detail.host.warnings]
    parts += [Text(clean(line), style="bold red") for line in health_lines([detail.host])]
    if inv is None:
        parts.append(Text("no inventory yet: the agent has not synced"))
        return Group(*parts)
    parts.append(plain(_facts(inv)))
    parts += [Text(f"warning: {clean(w)}", style="bold yellow") for w in inv.warnings]
    if inv.gpus:
        parts += [_title("devices"), *devices_tables(inv.gpus, width)]
    parts += [_title("blocks"), blocks_table(inv, detail.allocations)]
    if len(inv.gpus) > 1:
        parts += [_title("topology"), topology_table(inv.gpus), Text(LEGEND, style="dim")]
    return Group(*parts)


def _title(text: str) -> Text:
    return Text(f"\n{text}", style="bold underline")


def _heading(detail: HostDetail) -> Text:
    host = detail.host
    words = [
        host.name,
        host.status,
        f"{host.busy_blocks}/{host.total_blocks} blocks busy",
        f"seen {ago(host.last_seen)}",
    ]
    if host.simulated:
        words.append("[SIMULATED]")
    return Text(clean("  ".join(words)), style="bold")


def _facts(inv: Inventory) -> str:
    return (
        f"{inv.cpu_count} CPU, {_size(inv.memory_mib)} memory, {_size(inv.disk_mib)} disk; "
        f"runtimes: {', '.join(inv.runtimes)}"
    )


DEVICE_COLUMNS = (
    "GPU", "NAME", "MEMORY", "CC / ARCH", "DRIVER", "CUDA", "PCI BUS ID", "NUMA", "PCIE ROOT", "LINKS",
    "RENDER NODE", "SERIAL", "UUID",
)  # fmt: skip
# Where a narrow terminal cuts the devices table: what it is, where it sits, who it is (each with GPU first).
DEVICE_PARTS = ((1, 6), (6, 11), (11, 13))


def devices_tables(gpus: Iterable[GpuDevice], width: int) -> list[Table]:
    """One table of every device attribute, or, when that is wider than `width`, the same in parts."""
    rows = [_device_row(g) for g in gpus]
    if _natural_width([DEVICE_COLUMNS, *rows]) <= width:
        return [_filled(DEVICE_COLUMNS, rows)]
    return [
        _filled((DEVICE_COLUMNS[0], *DEVICE_COLUMNS[a:b]), [(r[0], *r[a:b]) for r in rows])
        for a, b in DEVICE_PARTS
    ]


def _natural_width(rows: list[tuple[str, ...]]) -> int:
    """The width of a table of these cells when nothing wraps: the widest cell of each column, one space
    either side between columns."""
    return sum(max(len(row[i]) for row in rows) for i in range(len(rows[0]))) + 2 * (len(rows[0]) - 1)


def _filled(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = _table(*columns)
    for row in rows:
        table.add_row(*map(plain, row))
    return table


def _device_row(g: GpuDevice) -> tuple[str, ...]:
    return (
        str(g.index),
        g.name,
        _size(g.memory_mib),
        g.compute_capability or g.architecture or "-",
        g.driver_version or "-",
        g.cuda_version or "-",
        g.pci_bus_id or "-",
        "-" if g.numa_node is None else str(g.numa_node),
        g.pcie_root or "-",
        id_list(g.links) or "-",
        g.render_node or "-",
        g.serial or "-",
        g.uuid or "-",
    )


def blocks_table(inv: Inventory, allocations: Iterable[HostAllocationView]) -> Table:
    holder = {b: a for a in allocations for b in a.blocks}
    table = _table("BLOCK", "GPUS", "CPUS", "MEMORY", "DISK", "NUMA", "JOB")
    for block in inv.blocks:
        table.add_row(
            str(block.index),
            id_list(block.gpus) or "-",
            id_list(block.cpus),
            _size(block.memory_mib),
            _size(block.disk_mib),
            "-" if block.numa_node is None else str(block.numa_node),
            _holder(holder.get(block.index)),
        )
    return table


def topology_table(gpus: tuple[GpuDevice, ...]) -> Table:
    """The matrix: one row and one column per GPU, then each GPU's NUMA node."""
    table = _table("", *(f"GPU{g.index}" for g in gpus), "NUMA")
    for a in gpus:
        cells = [relation_word(a, b) for b in gpus]
        table.add_row(f"GPU{a.index}", *cells, "-" if a.numa_node is None else str(a.numa_node))
    return table


def id_list(ids: Iterable[int]) -> str:
    """`(0, 1, 2, 3, 8, 10, 11)` → `"0-3,8,10-11"`, the kernel's CPU list format. Pure."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def _holder(alloc: HostAllocationView | None) -> Text:
    if alloc is None:
        return Text("-")
    return plain(f"{alloc.job_id} ({alloc.job_name}) {alloc.status}")


def _size(mib: int) -> str:
    """`81920` → `80GB`; other sizes to a tenth of a GB: `81559` → `79.6GB`, `196592` → `192GB`."""
    exact = format_mib(mib)
    if exact.endswith("MB") and mib >= 1024:
        return f"{mib / 1024:.1f}".rstrip("0").rstrip(".") + "GB"
    return exact


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table
