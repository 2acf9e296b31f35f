"""What a user reads of why an allocation failed: the reason without the agent's own paths.

A reason is often built from an exception (`[Errno 13] Permission denied: '/var/lib/gpuctl-agent/allocs/<id>/
work/x'`); the state dir's layout is the agent's business, and shows a member nothing they can act on. The
job's work dir (its own folder, or the staging folder its files are unpacked in) reads as `<work dir>`, an
allocation's folder as `<allocation dir>`, anything else under the state dir as `<agent state dir>`.
"""

from __future__ import annotations

import re
from pathlib import Path

_ID = r"[^/\s'\"]+"
_END = r"(?![^/\s'\"])"  # the path's component ends here: `/srv/agent` must not match in `/srv/agent2`


def public_reason(text: str, state_dir: Path) -> str:
    """`text` with every path under `state_dir` (as given, and resolved) replaced as the module says. Pure;
    idempotent."""
    if not text:
        return text
    for root in sorted({str(state_dir), str(state_dir.resolve())}, key=len, reverse=True):
        if not root.strip("/"):
            continue  # a state dir of `/` would hide every path
        prefix = re.escape(root.rstrip("/"))
        work = rf"{prefix}/(?:allocs/{_ID}|files/staged/{_ID})/work{_END}"
        text = re.sub(work, "<work dir>", text)
        text = re.sub(rf"{prefix}/allocs/{_ID}{_END}", "<allocation dir>", text)
        text = re.sub(rf"{prefix}{_END}", "<agent state dir>", text)
    return text
