"""Unhealthy devices as the coordinator holds them: what an agent reported since the host's last undrain.

An agent reports the devices it finds unhealthy now (agent/health.py) with its inventory. The coordinator
holds each mark until an operator undrains the host, so a device that looks fine again after an XID 79 (a
driver reload, a flapping link) takes no work before someone has looked at it. A held device idles its
block: the scheduler counts the block busy, so both schedulers (the pure one and the live one) leave it
alone alike, while the host's other blocks keep taking work. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from coordinator.scheduler import NAMED_IN_REASON, HostCapacity
from shared.wire import GpuHealth, Inventory


def held_after_report(held: Iterable[GpuHealth], reported: Iterable[GpuHealth]) -> tuple[GpuHealth, ...]:
    """The marks held once an agent's report arrives: every held one, a reported device's latest reason
    in place of its older one; by device index."""
    marks = {h.index: h for h in held} | {h.index: h for h in reported}
    return tuple(marks[i] for i in sorted(marks))


def unhealthy_blocks(inventory: Inventory, held: Iterable[GpuHealth]) -> frozenset[int]:
    """The blocks holding one of the held devices."""
    devices = {h.index for h in held}
    return frozenset(b.index for b in inventory.blocks if devices.intersection(b.gpus))


def unhealthy_note(host_name: str, held: tuple[GpuHealth, ...]) -> str:
    """A pending job's words for a host whose held devices idle blocks it could use: which GPU and why, the
    first NAMED_IN_REASON, the rest counted (an agent may mark its every device, each with a long reason)."""
    if not held:
        return ""
    named = ", ".join(f"GPU {h.index} unhealthy: {h.reason}" for h in held[:NAMED_IN_REASON])
    more = f" (and {len(held) - NAMED_IN_REASON} more GPUs)" if len(held) > NAMED_IN_REASON else ""
    return f"{host_name}: {named}{more}"


def with_held(cap: HostCapacity, held: tuple[GpuHealth, ...]) -> HostCapacity:
    """The host as both schedulers see it while `held` devices are unhealthy: their blocks busy, and a note
    naming them for the reasons of the jobs they keep waiting."""
    return replace(
        cap,
        busy_blocks=cap.busy_blocks | unhealthy_blocks(cap.inventory, held),
        unhealthy=unhealthy_note(cap.name, held),
    )
