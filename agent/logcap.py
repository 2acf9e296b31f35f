"""The log stream the coordinator receives for one allocation, when the coordinator caps its size.

The job writes its whole output to the spool; what is shipped is a *stream* derived from it that never
exceeds the cap: the spool's first half-cap (the head) while the job runs, and when it has ended either the
rest (when it all fits) or a marker line and the spool's last bytes (the tail). The head is shipped live, so
`logs -f` follows a job until its output passes half the cap; the tail comes once the job ends.

The stream is a pure function of the spool, its final size and the cap (which the allocation carries, so a
restarted agent derives the same bytes): shipping by stream offset stays idempotent.
"""

from __future__ import annotations

from pathlib import Path

from shared.units import format_mib

MARKER_RESERVE_BYTES = 256  # room for the marker line; the tail is what the cap leaves after head and this


def head_bytes(cap: int) -> int:
    return cap // 2


def tail_bytes(cap: int) -> int:
    return cap - head_bytes(cap) - MARKER_RESERVE_BYTES


def is_cut(spool_size: int, cap: int) -> bool:
    """Whether a spool of this (final) size is too large for the cap and loses its middle."""
    return cap > 0 and spool_size > cap


def marker(spool_size: int, cap: int) -> bytes:
    """The line that stands where the middle of an over-cap log was cut."""
    cut = spool_size - head_bytes(cap) - tail_bytes(cap)
    size = format_mib(cap // (1024 * 1024)) if cap >= 1024 * 1024 else f"{cap} B"
    line = f"\n[gpuctl: {cut} bytes cut here: the job's log is over its {size} cap]\n".encode()
    return line[: MARKER_RESERVE_BYTES - 1] + b"\n" if len(line) > MARKER_RESERVE_BYTES else line


def stream_size(spool_size: int, cap: int, ended: bool) -> int:
    """How many stream bytes there are to ship now; final once `ended`."""
    if cap <= 0:
        return spool_size
    if not ended:
        return min(spool_size, head_bytes(cap))
    if not is_cut(spool_size, cap):
        return spool_size
    return head_bytes(cap) + len(marker(spool_size, cap)) + tail_bytes(cap)


def read_stream(spool: Path, offset: int, max_bytes: int, spool_size: int, cap: int, ended: bool) -> bytes:
    """At most `max_bytes` of the stream from `offset` (stream offsets equal spool offsets up to the cut)."""
    end = min(offset + max_bytes, stream_size(spool_size, cap, ended))
    if offset >= end:
        return b""
    if not (ended and is_cut(spool_size, cap)) or end <= head_bytes(cap):
        return _read(spool, offset, end - offset)
    head, mark = head_bytes(cap), marker(spool_size, cap)
    tail_start = spool_size - tail_bytes(cap)  # where the tail begins in the spool
    out = _read(spool, offset, head - offset) if offset < head else b""
    out += mark[max(0, offset - head) : end - head]
    first = max(offset, head + len(mark))  # stream offset of the first tail byte wanted
    if end > first:
        out += _read(spool, tail_start + first - head - len(mark), end - first)
    return out


def _read(spool: Path, offset: int, size: int) -> bytes:
    with open(spool, "rb") as f:
        f.seek(offset)
        return f.read(size)
