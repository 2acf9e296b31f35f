"""What the agent's loops share: the latest desired state, the current inventory, and the wake-ups between loops."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from shared.constants import LOG_CHUNK_MAX_BYTES, METRICS_INTERVAL_S
from shared.wire import AllocationSpec, GpuHealth, GpuMetrics, Inventory


@dataclass
class SharedState:
    desired: list[AllocationSpec] = field(default_factory=list)
    desired_index: int = 0
    coordinator_generation: str = ""
    host_id: str = ""
    last_error: str = ""
    disk_problem: str = ""  # the state dir cannot take new work (agent.diskguard); sent with the inventory
    unhealthy: tuple[GpuHealth, ...] = ()  # devices agent.health finds unhealthy; sent with the inventory
    log_chunk_max_bytes: int = LOG_CHUNK_MAX_BYTES  # the coordinator's answer may lower it
    metrics_interval_s: float = METRICS_INTERVAL_S  # how often agent.readings reads: the coordinator's
    readings: tuple[GpuMetrics, ...] = ()  # the latest, unsent: the next sync takes them (agent.readings)
    readings_at: float = 0.0  # when they were read (monotonic)
    last_sync_at: float = field(default_factory=time.monotonic)  # the last answer; the agent's start at first
    inventory: Inventory | None = None  # the latest detected; replaced whole by re-detection, never mutated
    synced_once: asyncio.Event = field(default_factory=asyncio.Event)
    desired_changed: asyncio.Event = field(default_factory=asyncio.Event)  # sync, a job ended → executor
    local_changed: asyncio.Event = field(default_factory=asyncio.Event)  # executor, re-detection → sync
    logs_written: asyncio.Event = field(default_factory=asyncio.Event)  # executor → shipper
    redetect_requested: asyncio.Event = field(default_factory=asyncio.Event)  # SIGHUP → re-detection
