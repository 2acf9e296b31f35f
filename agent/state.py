"""What the agent's loops share: the latest desired state and the wake-ups between loops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shared.wire import AllocationSpec


@dataclass
class SharedState:
    desired: list[AllocationSpec] = field(default_factory=list)
    desired_index: int = 0
    coordinator_generation: str = ""
    host_id: str = ""
    last_error: str = ""
    synced_once: asyncio.Event = field(default_factory=asyncio.Event)
    desired_changed: asyncio.Event = field(default_factory=asyncio.Event)  # sync → executor
    local_changed: asyncio.Event = field(default_factory=asyncio.Event)  # executor → sync
    logs_written: asyncio.Event = field(default_factory=asyncio.Event)  # executor → shipper
