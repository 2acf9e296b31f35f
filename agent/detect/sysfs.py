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
