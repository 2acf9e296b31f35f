"""The coordinator's disk limits as `coordinator.yaml` spells them:

log_cap: 1GiB        # per allocation: the head and the tail are kept, the middle is cut (0: no cap)
upload_quota: 1GiB   # stored files archives per project (0: no quota)
disk_floor: 1GiB     # or 5%: under this much free space, new submits and uploads are refused
"""

from __future__ import annotations

import dataclasses

from coordinator.disk import parse_floor, parse_size_bytes
from coordinator.service import Settings

LIMIT_SETTINGS = ("log_cap", "upload_quota", "disk_floor")


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
    return settings
