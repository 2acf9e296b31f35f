"""The coordinator's disk limits as `coordinator.yaml` spells them:

log_cap: 1GiB        # per allocation: the head and the tail are kept, the middle is cut (0: no cap)
upload_quota: 1GiB   # stored files archives per project (0: no quota)
disk_floor: 1GiB     # or 5%: under this much free space, new submits and uploads are refused
max_array_tasks: 10000  # tasks in one job array (`gpuctl submit --array`)
"""

from __future__ import annotations

import dataclasses

from coordinator.disk import parse_floor, parse_size_bytes
from coordinator.service import Settings
from shared.arrays import MAX_ARRAY_INDEX

LIMIT_SETTINGS = ("log_cap", "upload_quota", "disk_floor", "max_array_tasks")


def limit_settings(raw: dict, base: Settings) -> Settings:
    """`base` with the limits `raw` sets. Raises ValueError with one line naming the setting."""
    settings = base
    if "log_cap" in raw:
        cap = parse_size_bytes("log_cap", raw["log_cap"])
        if 0 < cap < 1024 * 1024:  # the marker and a useful head and tail need room
            raise ValueError(f"log_cap: must be 0 (no cap) or at least 1MB, got {raw['log_cap']!r}")
        settings = dataclasses.replace(settings, log_cap_bytes=cap)
    if "upload_quota" in raw:
        quota = parse_size_bytes("upload_quota", raw["upload_quota"])
        settings = dataclasses.replace(settings, upload_quota_bytes=quota)
    if "disk_floor" in raw:
        floor_bytes, floor_percent = parse_floor(raw["disk_floor"])
        settings = dataclasses.replace(
            settings, disk_floor_bytes=floor_bytes, disk_floor_percent=floor_percent
        )
    if "max_array_tasks" in raw:
        tasks = raw["max_array_tasks"]
        if not isinstance(tasks, int) or isinstance(tasks, bool) or not 1 <= tasks <= MAX_ARRAY_INDEX + 1:
            raise ValueError(
                f"max_array_tasks: expected a number from 1 to {MAX_ARRAY_INDEX + 1}, got {tasks!r}"
            )
        settings = dataclasses.replace(settings, max_array_tasks=tasks)
    return settings
