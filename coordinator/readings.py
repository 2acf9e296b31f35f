"""The agents' device readings, in memory: the latest few minutes of each GPU of each host.

Agents send their latest readings with a sync (agent/readings.py), each once, with its age; a sample is
stamped with the coordinator's clock (`now - age`), so hosts with wrong clocks line up. A reading of a GPU
index the host's inventory lacks is dropped, not refused: the sync carries the host's jobs' news, which must
not wait on a reading. Memory is bounded: `SAMPLES_PER_GPU` samples of each GPU of the host's inventory (which
the wire bounds), each in a compact ring (coordinator/sample_ring.py), and a removed host's are forgotten.
Liveness-like, they are not stored: a restarted coordinator starts with none, and the next syncs refill it.

`gpuctl metrics JOB`, `gpuctl top`, the console and job accounting read it (`latest`: the latest reading of
some GPUs of a host; `series`: one GPU's samples); `/metrics` reads the rings (`rings`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from coordinator.lease_settings import duration_setting
from coordinator.sample_ring import SampleRing
from coordinator.settings import Settings
from coordinator.store import HostRow
from shared.wire import GpuSample, SyncRequest

log = logging.getLogger("gpuctl.coordinator")

SAMPLES_PER_GPU = 60  # at the default 10 s interval, ten minutes
READINGS_SETTINGS = ("metrics_interval",)


@dataclass
class _Host:
    name: str
    gpus: dict[int, SampleRing] = field(default_factory=dict)
    warned: bool = False  # its readings of GPUs it lacks were logged (once)


class DeviceReadings:
    """Each host's GPUs' latest samples, oldest first. The event loop alone changes it (`rings` hands another
    thread what it may read)."""

    def __init__(self, samples_per_gpu: int = SAMPLES_PER_GPU) -> None:
        self.samples_per_gpu = samples_per_gpu
        self._hosts: dict[str, _Host] = {}

    def note(self, host: HostRow, req: SyncRequest, now: float) -> None:
        """Keep the readings a sync carries, of the GPUs in the inventory it carries (else the one stored).
        A reading not newer than the GPU's latest sample (the same one again) is not kept twice."""
        if not req.readings:
            return
        inventory = req.inventory or host.inventory
        uuids = {gpu.index: gpu.uuid for gpu in inventory.gpus} if inventory else {}
        kept = self._hosts.setdefault(host.id, _Host(host.name))
        kept.name = host.name
        for index in set(kept.gpus) - set(uuids):  # the inventory lost devices since: forget them
            del kept.gpus[index]
        at = now - req.readings_age_s
        strays = []
        for reading in req.readings:
            if reading.index not in uuids:
                strays.append(reading.index)
                continue
            ring = kept.gpus.get(reading.index)
            if ring is None:  # named as the inventory names it, as every view does
                uuid = uuids[reading.index] or reading.uuid
                ring = kept.gpus[reading.index] = SampleRing(reading.index, uuid, self.samples_per_gpu)
            latest_at = ring.latest_at()
            if latest_at is None or latest_at < at:
                ring.append(at, reading)
        if strays and not kept.warned:
            kept.warned = True
            log.warning(
                "host %s sent readings of GPUs %s that its inventory lacks; dropped", host.name, strays
            )

    def forget(self, host_id: str) -> None:
        """Drop a host's readings (it was removed). Idempotent."""
        self._hosts.pop(host_id, None)

    def latest(self, host_id: str, indices: Iterable[int] | None = None) -> dict[int, GpuSample]:
        """The latest sample of each of the host's GPUs in `indices` (all if None) that has one."""
        gpus = self._hosts[host_id].gpus if host_id in self._hosts else {}
        wanted = sorted(gpus) if indices is None else indices
        return {i: sample for i in wanted if i in gpus and (sample := gpus[i].latest()) is not None}

    def series(self, host_id: str, index: int) -> list[GpuSample]:
        """The samples of one GPU of a host, oldest first; [] for none."""
        ring = self._hosts[host_id].gpus.get(index) if host_id in self._hosts else None
        return ring.samples() if ring else []

    def hosts(self) -> list[tuple[str, str]]:
        """(id, name) of every host with readings, by name."""
        return sorted(((host_id, h.name) for host_id, h in self._hosts.items()), key=lambda pair: pair[1])

    def rings(self) -> list[tuple[str, str, list[SampleRing]]]:
        """(host id, name, its GPUs' rings by index) of every host: a copy of the lists, which another
        thread may walk while the event loop goes on (`/metrics`: coordinator/readings_metrics.py)."""
        return [(host_id, h.name, [h.gpus[i] for i in sorted(h.gpus)]) for host_id, h in self._hosts.items()]


def readings_settings(raw: dict, base: Settings) -> Settings:
    """`base` with `metrics_interval` (how often agents read their devices: `10s`, `1m`; whole seconds, so
    at least 1s) if `raw` sets it. Raises ValueError with one line naming the setting."""
    if "metrics_interval" not in raw:
        return base
    return dataclasses.replace(
        base, metrics_interval_s=duration_setting("metrics_interval", raw["metrics_interval"])
    )
