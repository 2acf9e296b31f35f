"""The limits a spec must keep and the texts its messages share."""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,59}")  # dstack-style run name, at most 60 characters
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
GPU_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,63}")
GPU_VENDORS = ("nvidia", "amd", "intel")
MIN_PRIORITY, MAX_PRIORITY = 0, 100  # dstack's range
MAX_NODES = 1000
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV_ENTRIES = 1000
MAX_ENV_VALUE_BYTES = 64 * 1024
MAX_IMAGE_CHARS = 512
MAX_PATH_BYTES = 4096  # working_dir, each side of a volume, a fleet name
MAX_LIST_ITEMS = 1000  # commands, volumes, fleets, files
WORKFLOW_DIR = (
    "/workflow"  # dstack's working directory: an absolute `files` path under it is relative to ours
)
_ARCHIVE_ID_RE = re.compile(r"[0-9a-f]{64}")
MAX_GPU_NAMES = 32
MAX_RANGE_VALUE = 2**53  # cores, GPUs, MiB: far beyond any machine, and exact as a float
MAX_DURATION_S = 10 * 366 * 86400
MIN_LOST_AFTER_S = 1  # `lost_after:` of a job; the coordinator's own lease is checked no faster
MAX_STOP_DURATION_S = 3600  # a host's blocks stay taken while a job stops: an hour is already generous
MAX_CREDENTIAL_BYTES = 8 * 1024  # a registry token (a JWT, an NGC key) fits many times over
REDACTED = "<redacted>"
_INTERPOLATION_RE = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")

_UNSUPPORTED_GPU_VENDORS = ("tpu", "google")
_TPU_NAME_RE = re.compile(r"v\d[a-z]*-\d+", re.IGNORECASE)  # v5litepod-8, v2-8
_COUNT_TOKEN_RE = re.compile(r"[+-]?\d*\.\.[+-]?\d*|[+-]?\d+", re.ASCII)
_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)", re.ASCII)

_GPU_PART_LABELS = {
    "vendor": "vendor",
    "names": "name part (list alternative names in one part: A10G,A100)",
    "memory": "memory size",
    "count": "count",
}

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_COUNT_EXPECTED = "a GPU count like 2, 1..8 or 2.."
_CPU_EXPECTED = "a number of cores like 8, 2..8 or 4.."
_SIZE_RANGE_EXPECTED = "a size like 64GB or a range like 24GB..80GB or 64GB.."
_SIZE_EXPECTED = "a size like 16GB or 512MB"
_CAPABILITY_EXPECTED = "a compute capability like 8.0, 8.0.. or 8.0..9.0"
_CAPABILITY_RE = re.compile(r"\d{1,2}(\.\d)?", re.ASCII)
MAX_COMPUTE_CAPABILITY = 99.9
_DURATION_EXPECTED = "a duration like 2h, 30m or 1h30m, or off"
