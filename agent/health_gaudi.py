"""Intel Gaudi health through hl-smi: a device gone from its listing, uncorrectable ECC errors past the limit.

hl-smi has no event source (its `-Q` query reads counters; `hl-smi -q` prints them as a table), so a Gaudi is
unhealthy when a successful listing no longer shows it, or when its `ecc.errors.uncorrected.volatile.total`
(since the driver loaded) reaches `ECC_UNCORRECTED_LIMIT`. Devices are told apart by PCI bus id, as hl-smi's
indices may shift when one is gone; marks carry the inventory's index. A listing that fails (hl-smi
missing, timing out, its exit status) is no verdict: the marks stay as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from agent.detect.gaudi import Runner, _query, _whole
from agent.detect.sysfs import sysfs_pci_address
from agent.health_watch import ECC_UNCORRECTED_LIMIT
from shared.wire import GpuDevice, GpuHealth

HEALTH_FIELDS = ("bus_id", "ecc.errors.uncorrected.volatile.total")
ECC_FIELD = HEALTH_FIELDS[1]

log = logging.getLogger("gpuctl.agent")


class HlSmiWatch:
    """The inventory's Gaudi devices, checked with one hl-smi query each time. Runs a process: call it in a
    worker thread. Not safe concurrently with itself."""

    def __init__(self, gpus: Iterable[GpuDevice], run: Runner | None = None) -> None:
        self.run = run
        self.index_of = {_bus(g.pci_bus_id): g.index for g in gpus if g.vendor == "intel"}
        self.marks: tuple[GpuHealth, ...] = ()
        self.failure = ""  # why the last listing failed, said once per run of failures

    def check(self) -> tuple[GpuHealth, ...]:
        """Every unhealthy device now: those the listing lacks, those with ECC errors past the limit."""
        rows, failure = _query(self.run, HEALTH_FIELDS)
        if failure is not None:
            said = "; ".join(failure.warnings + failure.info)
            if said != self.failure:
                log.warning("Gaudi health not read, marks kept: %s", said)
            self.failure = said
            return self.marks
        self.failure = ""
        listed = {_bus(row.get("bus_id", "")): row for row in rows}
        marks = []
        for bus, index in sorted(self.index_of.items(), key=lambda item: item[1]):
            if (row := listed.get(bus)) is None:
                marks.append(GpuHealth(index=index, reason="gone: hl-smi no longer lists it"))
            elif (errors := _whole(row.get(ECC_FIELD, ""))) is not None and errors >= ECC_UNCORRECTED_LIMIT:
                marks.append(GpuHealth(index=index, reason=f"{errors} uncorrectable ECC errors"))
        self.marks = tuple(marks)
        return self.marks

    def close(self) -> None:
        """Nothing held between checks."""


def _bus(bus_id: str) -> str:
    """One spelling of a PCI address (hl-smi's 4-hex domain, a simulated device's 8-hex one)."""
    return sysfs_pci_address(bus_id) or bus_id
