"""The runtime interface: how the agent starts, watches and stops one allocation's work."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.states import AllocState
from shared.wire import AllocationSpec, Inventory


@dataclass(frozen=True)
class Observed:
    """What a runtime sees of one allocation right now."""

    state: AllocState
    exit_code: int | None = None
    reason: str = ""
    finished_at: float | None = None


class Runtime(Protocol):
    """Every call returns promptly (it runs on the agent's event loop); slow work happens in the background
    and shows through `observe`."""

    name: str

    def start(self, alloc: AllocationSpec, env: dict[str, str], alloc_dir: Path, log_file: Path) -> None:
        """Start the work. Output goes to `log_file` (append). Raises RuntimeStartError with a reason."""

    def observe(self, alloc_dir: Path) -> Observed:
        """The allocation's state, also for one started by an earlier agent process (re-adoption)."""

    def signal_stop(self, alloc_dir: Path, kill: bool) -> None:
        """SIGTERM (or SIGKILL when `kill`) to the allocation's processes. Idempotent."""

    def release(self, alloc_dir: Path) -> None:
        """Free what the ended allocation still holds (its container) before its folder goes. Idempotent."""

    def sweep(self, known_alloc_ids: Collection[str]) -> None:
        """At start-up: remove this host's work that belongs to no allocation in the journal."""

    def set_inventory(self, inventory: Inventory) -> None:
        """Re-detection found new devices: work started from now on uses them (running work keeps its own)."""

    def close(self) -> None:
        """The agent is stopping; running work keeps running, to be re-adopted by the next agent."""


class RuntimeStartError(RuntimeError):
    pass
