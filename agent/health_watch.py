"""What every vendor's GPU health watch shares: its interface, the ECC limit, and how it says it cannot start.

A watch (agent/health_nvidia.py, health_amd.py, health_gaudi.py) holds its vendor's library open between
checks, because events (NVIDIA's XIDs, AMD's resets) reach only a library that registered for them before
they happened. The loop in agent/health.py opens one, checks it every few seconds and closes it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from shared.wire import GpuHealth, GpuMetrics

# Uncorrectable ECC errors since the driver loaded that mark a device, for every vendor: one is a retired page
# or row the hardware dealt with; ten mean memory that keeps failing (README, GPU health).
ECC_UNCORRECTED_LIMIT = 10


class WatchUnavailable(Exception):
    """The vendor's library or tool cannot be started: nothing is watched on this host (said once)."""


class Watch(Protocol):
    """An open watch. Blocking calls: run them in a worker thread. Not safe concurrently with itself."""

    def check(self) -> tuple[GpuHealth, ...]:
        """Every device unhealthy now, by index in the vendor's enumeration, each once, sorted."""
        ...

    def close(self) -> None:
        """Release the library; never raises."""
        ...


@runtime_checkable
class Reads(Protocol):
    """A watch that also reads its devices (agent/readings.py), over the session it holds open: the library
    is started once, not for every reading beside a watch that holds it, and a reading carries what the watch
    saw (NVIDIA's XIDs). Safe from several threads."""

    def read(self) -> tuple[GpuMetrics, ...]: ...
