"""The coordinator's settings (coordinator.yaml, `gpuctl-coordinator run` flags, or a test's own)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.accounting import READINGS_SAVE_S
from coordinator.backfill import BACKFILL_DEPTH
from coordinator.disk import DiskUsage, real_usage
from coordinator.limits import BusyLimits
from coordinator.submit_rules import DEFAULT_PYTHON_IMAGE
from shared import constants as C


@dataclass(frozen=True)
class Settings:
    poll_timeout_s: float = C.POLL_TIMEOUT_S  # held at most half the lease (coordinator/leases.py)
    sync_interval_s: float = C.SYNC_INTERVAL_S
    log_chunk_max_bytes: int = C.LOG_CHUNK_MAX_BYTES
    metrics_interval_s: float = (
        C.METRICS_INTERVAL_S
    )  # how often agents read their devices (coordinator/readings.py)
    unreachable_after_s: float = C.HOST_UNREACHABLE_AFTER_S  # the lease; longer for a large fleet
    leader_lease_s: float = C.LEADER_LEASE_S  # replicas on PostgreSQL (coordinator/leader.py)
    lost_after_s: float = C.HOST_LOST_AFTER_S  # a job's `lost_after:` wins, then its fleet's
    fleet_lost_after_s: dict[str, float] = field(default_factory=dict)
    retry_delay_s: float = C.RETRY_DELAY_S  # after a failed attempt; doubles in a run of failures
    retry_delay_max_s: float = C.RETRY_DELAY_MAX_S
    agent_cert_ttl_s: int = C.AGENT_CERT_TTL_S
    files_keep_s: float = C.FILES_KEEP_S
    python_image: str = DEFAULT_PYTHON_IMAGE  # the image of a `python: "3.11"` job; `{version}` is replaced
    log_cap_bytes: int = C.LOG_CAP_BYTES  # per allocation; 0: no cap
    upload_quota_bytes: int = C.UPLOAD_QUOTA_BYTES  # stored files archives per project; 0: no quota
    max_array_tasks: int = C.MAX_ARRAY_TASKS  # in one job array
    fair_share_half_life_s: float = C.FAIR_SHARE_HALF_LIFE_S  # usage weighs half as much this long after
    backfill_depth: int = (
        BACKFILL_DEPTH  # waiting jobs given a reservation (coordinator/backfill.py); 0: none
    )
    # the first port of a multi-node job's or a dev environment's sshd; the range is JOB_SSH_PORTS long
    job_ssh_port_first: int = C.JOB_SSH_PORT_FIRST
    disk_floor_bytes: int = C.DISK_FLOOR_BYTES  # under this much free space, refuse new submits and uploads
    disk_floor_percent: float = 0.0  # or under this share of the disk, whichever is larger
    disk_usage: DiskUsage = real_usage
    protocol_version: str = C.PROTOCOL_VERSION  # agents within one minor version of it are served
    busy: BusyLimits = BusyLimits()  # requests at work per class; one more is answered 429 (busy.py)
    readings_save_s: float = READINGS_SAVE_S  # device readings for accounting reach the store this often
    # the URLs hosts reach the coordinators at (all replicas), carried by the join strings it prints; ()
    # prints join strings without URLs (the host is then given `--coordinator`)
    advertise_urls: tuple[str, ...] = ()
