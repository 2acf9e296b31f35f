"""Read host topology facts from sysfs; the root is a parameter so tests never read the real host."""

from __future__ import annotations

import os

SYSFS_ROOT = "/sys"


def sysfs_pci_address(bus_id: str) -> str | None:
    """`"00000000:18:00.0"` (NVML, 8-hex domain) or `"0000:18:00.0"` → `"0000:18:00.0"`, the sysfs name.

    Returns None when `bus_id` is not `DOMAIN:BUS:DEVICE.FUNCTION` in hex.
    """
    parts = bus_id.strip().split(":")
    if len(parts) != 3:
        return None
    domain, bus, devfn = parts
    try:
        return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{devfn.lower()}"
    except ValueError:
        return None


def read_numa_node(bus_id: str, sysfs_root: str = SYSFS_ROOT) -> int | None:
    """The NUMA node of a PCI device, or None when unknown (unreadable, malformed, or -1 = no affinity)."""
    address = sysfs_pci_address(bus_id)
    if address is None:
        return None
    path = os.path.join(sysfs_root, "bus", "pci", "devices", address, "numa_node")
    try:
        with open(path, encoding="ascii") as f:
            node = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def read_pcie_root(bus_id: str, sysfs_root: str = SYSFS_ROOT) -> str:
    """The PCIe host bridge above a device, as sysfs names it (`"pci0000:15"`), or "" when unknown.

    `/sys/bus/pci/devices/<address>` is a link into `/sys/devices/pci<domain>:<bus>/...`; the first folder
    there is the root complex, so two devices with the same answer share a host bridge (PIX, PXB or PHB).
    """
    address = sysfs_pci_address(bus_id)
    if address is None:
        return ""
    device = os.path.join(sysfs_root, "bus", "pci", "devices", address)
    if not os.path.exists(device):
        return ""
    relative = os.path.relpath(os.path.realpath(device), os.path.realpath(sysfs_root))
    parts = relative.split(os.sep)
    if len(parts) > 2 and parts[0] == "devices" and parts[1].startswith("pci"):
        return parts[1]
    return ""


def read_render_node(bus_id: str, sysfs_root: str = SYSFS_ROOT) -> str:
    """The DRM render node of a GPU (`"/dev/dri/renderD128"`), from its PCI device's `drm` folder; "" if none."""
    address = sysfs_pci_address(bus_id)
    if address is None:
        return ""
    try:
        names = os.listdir(os.path.join(sysfs_root, "bus", "pci", "devices", address, "drm"))
    except OSError:
        return ""
    renders = sorted(n for n in names if n.startswith("renderD") and n[7:].isdigit())
    return f"/dev/dri/{renders[0]}" if renders else ""


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The kernel's CPU list format, `"0-3,8,10-11"` → `(0, 1, 2, 3, 8, 10, 11)`. ValueError if malformed."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return tuple(sorted(set(cpus)))


def read_cpu_numa(sysfs_root: str = SYSFS_ROOT) -> dict[int, int]:
    """CPU id → NUMA node, from `devices/system/node/node*/cpulist`; empty on a host without NUMA in sysfs."""
    base = os.path.join(sysfs_root, "devices", "system", "node")
    try:
        names = os.listdir(base)
    except OSError:
        return {}
    numa_of: dict[int, int] = {}
    for name in names:
        if not (name.startswith("node") and name[4:].isdigit()):
            continue
        try:
            with open(os.path.join(base, name, "cpulist"), encoding="ascii") as f:
                cpus = parse_cpulist(f.read())
        except (OSError, ValueError):
            continue
        numa_of.update((cpu, int(name[4:])) for cpu in cpus)
    return numa_of


def read_cpu_cores(cpus: tuple[int, ...], sysfs_root: str = SYSFS_ROOT) -> dict[int, int]:
    """CPU id → the lowest CPU id of its physical core (its hyperthread siblings share it), from
    `devices/system/cpu/cpu<N>/topology/thread_siblings_list`. CPUs that sysfs does not describe are absent."""
    core_of: dict[int, int] = {}
    for cpu in cpus:
        path = os.path.join(
            sysfs_root, "devices", "system", "cpu", f"cpu{cpu}", "topology", "thread_siblings_list"
        )
        try:
            with open(path, encoding="ascii") as f:
                siblings = parse_cpulist(f.read())
        except (OSError, ValueError):
            continue
        if siblings:
            core_of[cpu] = siblings[0]
    return core_of
