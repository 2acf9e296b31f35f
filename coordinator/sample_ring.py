"""One GPU's latest samples as numbers in arrays, not as decoded readings: a reading decoded from a sync is a
struct of boxed numbers and strings, 431 bytes a sample (500 hosts of 8 GPUs with 60 samples each took 103 MB,
so 2 GB at 10,000 hosts); here a sample is its time (a double) and its values (32-bit floats, NaN for what was
not reported), 40 bytes. The GPU's UUID and XIDs are kept once, from its latest reading: XIDs are cumulative,
so the latest reading holds every one the agent saw (the wire's latest MAX_XIDS).
"""

from __future__ import annotations

import math
from array import array

from shared.wire import GpuMetrics, GpuSample

# The values of a reading kept per sample, in this order (`sample` reads them back by position).
VALUES = (
    "utilization_pct",
    "memory_used_mib",
    "memory_total_mib",
    "temperature_c",
    "power_w",
    "sm_clock_mhz",
    "ecc_corrected",
    "ecc_uncorrected",
)
WIDTH = len(VALUES)


class SampleRing:
    """The latest `capacity` samples of one GPU, the oldest overwritten first. One writer (the event loop);
    `latest_values` may be read from another thread meanwhile."""

    def __init__(self, index: int, uuid: str, capacity: int) -> None:
        self.index = index
        self.uuid = uuid
        self.capacity = capacity
        self.ats = array("d", bytes(8 * capacity))
        self.values = array("f", [math.nan]) * (capacity * WIDTH)
        self.count = 0  # samples ever appended
        self.xids: tuple[int, ...] = ()

    def latest_at(self) -> float | None:
        return self.ats[(self.count - 1) % self.capacity] if self.count else None

    def append(self, at: float, reading: GpuMetrics) -> None:
        """Keep a sample, overwriting the oldest when full. A reader in another thread (the `/metrics`
        text) sees the latest sample whole: the row is written in one slice assignment, before the count
        that makes it the latest moves."""
        slot = self.count % self.capacity
        row = array("f", [math.nan if (v := getattr(reading, name)) is None else v for name in VALUES])
        self.values[slot * WIDTH : (slot + 1) * WIDTH] = row
        self.ats[slot] = at
        self.xids = reading.xids
        self.count += 1

    def latest_values(self) -> array[float] | None:
        """The latest sample's values, in VALUES's order (NaN: not reported); None before the first."""
        if not self.count:
            return None
        slot = (self.count - 1) % self.capacity
        return self.values[slot * WIDTH : (slot + 1) * WIDTH]

    def samples(self) -> list[GpuSample]:
        """Every sample kept, oldest first; the latest alone carries the XIDs."""
        return [self.sample(n) for n in range(max(0, self.count - self.capacity), self.count)]

    def latest(self) -> GpuSample | None:
        return self.sample(self.count - 1) if self.count else None

    def sample(self, n: int) -> GpuSample:
        """The `n`th sample ever appended (it must still be kept)."""
        slot = n % self.capacity
        v = self.values[slot * WIDTH : (slot + 1) * WIDTH]
        reading = GpuMetrics(
            index=self.index,
            uuid=self.uuid,
            utilization_pct=_real(v[0]),
            memory_used_mib=_whole(v[1]),
            memory_total_mib=_whole(v[2]),
            temperature_c=_real(v[3]),
            power_w=_real(v[4]),
            sm_clock_mhz=_real(v[5]),
            ecc_corrected=_whole(v[6]),
            ecc_uncorrected=_whole(v[7]),
            xids=self.xids if n == self.count - 1 else (),
        )
        return GpuSample(at=self.ats[slot], reading=reading)


def _real(value: float) -> float | None:
    """None for NaN (not reported); else rounded to what a 32-bit float holds, so 655.12 W reads back as
    655.12, not 655.1199951171875."""
    return None if math.isnan(value) else float(f"{value:.6g}")


def _whole(value: float) -> int | None:
    return None if math.isnan(value) else int(value)
