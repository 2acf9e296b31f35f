"""Who a plain-process job runs as: one uid and gid of its own per allocation, from a range the agent owns.

Jobs of different allocations then cannot signal each other, read each other's /proc/<pid>/environ or
/proc/<pid>/cwd, or enter each other's work dirs, as they could when every job ran as `nobody`. The range
must hold no user or group of the host (checked at start), so a job never acts as someone real.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

UID_FILE = "job_uid"  # in the allocation's folder: a restarted agent re-adopts with the same uid
DEFAULT_JOB_UID_RANGE = "200000-265535"


class UidRangeError(ValueError):
    """One line: what is wrong with the range."""


@dataclass(frozen=True)
class UidRange:
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.first <= value <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_uid_range(text: object) -> UidRange:
    """`200000-265535` as a UidRange. Raises UidRangeError."""
    try:
        first_text, last_text = str(text).split("-")
        first, last = int(first_text), int(last_text)
    except ValueError:
        raise UidRangeError(f"expected FIRST-LAST such as {DEFAULT_JOB_UID_RANGE}, got {text!r}") from None
    if not 1000 <= first <= last < 2**32 - 1:
        raise UidRangeError(f"{first}-{last}: expected 1000 <= FIRST <= LAST < 4294967295")
    return UidRange(first, last)


def check_uid_range(
    uids: UidRange, passwd: Path = Path("/etc/passwd"), group: Path = Path("/etc/group")
) -> None:
    """Raise UidRangeError naming the first user or group of the host whose id lies in the range."""
    for path, kind in ((passwd, "user"), (group, "group")):
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) in uids:
                raise UidRangeError(
                    f"{uids} holds {kind} {fields[0]!r} (id {fields[2]}) of {path}; "
                    "choose a range no user or group of this host uses"
                )


def job_uid(alloc_dir: Path, uids: UidRange) -> int:
    """The allocation's uid (its gid is the same number): read from its folder, else chosen and written
    there. The choice hashes the allocation's id into the range and steps past uids that other
    allocations in the same parent folder hold, so no two live allocations share one. Idempotent; not
    safe concurrently with itself (the executor starts one allocation at a time)."""
    mine = alloc_dir / UID_FILE
    try:
        return int(mine.read_text())
    except (FileNotFoundError, ValueError):
        pass
    taken = set()
    for other in alloc_dir.parent.glob(f"*/{UID_FILE}"):
        try:
            taken.add(int(other.read_text()))
        except (OSError, ValueError):
            continue
    start = int.from_bytes(hashlib.sha256(alloc_dir.name.encode()).digest()[:8], "big") % uids.size
    for step in range(uids.size):
        uid = uids.first + (start + step) % uids.size
        if uid not in taken:
            break
    else:
        raise UidRangeError(f"every uid of {uids} is held by a live allocation")
    tmp = mine.with_name(UID_FILE + ".tmp")
    tmp.write_text(str(uid))
    os.replace(tmp, mine)
    return uid
