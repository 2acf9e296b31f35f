"""The outcome of one accelerator detector: devices found, plus what the operator should hear about."""

from __future__ import annotations

from dataclasses import dataclass

from shared.wire import GpuDevice


@dataclass(frozen=True)
class DetectResult:
    """What one vendor's detector found.

    `warnings` are problems an operator must fix (a driver mismatch, a GPU skipped); they travel to the
    coordinator in `Inventory.warnings`. `info` lines are facts worth one log line (driver version, "no
    library here") and stay on the host.
    """

    gpus: tuple[GpuDevice, ...] = ()
    warnings: tuple[str, ...] = ()
    info: tuple[str, ...] = ()
