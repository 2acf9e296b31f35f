"""Copy a container's output into the allocation's log spool, resuming after an agent restart with no line
lost and none twice.

The engine keeps the container's log (json-file) and hands it out as messages, each stamped with a
nanosecond timestamp. The spool is plain bytes, shipped by offset. A cursor file records the last message
copied, as (timestamp, how many messages with exactly that timestamp came before it and it, the spool's
size after it); it is written after the spool, so the spool may hold bytes past the cursor (the agent died
in between) but never fewer. To resume, the copier asks the engine for messages from a second before the
cursor, skips up to the cursor's message, then skips as many bytes as the spool holds past the cursor.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

NS_PER_S = 1_000_000_000
RESUME_MARGIN_S = 1  # messages of two streams (stdout, stderr) can be stored a little out of time order
ANCHOR_LOST_AFTER_NS = 5 * NS_PER_S  # the cursor's message never came back (rotated away): copy on
CURSOR_SAVE_INTERVAL_S = 0.5


@dataclass
class LogCursor:
    ts_ns: int = 0  # timestamp of the last message copied; 0: nothing copied yet
    at_ts: int = 0  # messages with exactly that timestamp copied so far (long lines share one)
    spool_bytes: int = 0  # the spool's size right after that message

    @classmethod
    def load(cls, path: Path) -> LogCursor:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return cls()

    def save(self, path: Path) -> None:
        """Atomic: a reader sees the old cursor or the new one, never half of one."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def since_s(self) -> int | None:
        """The `since` to ask the engine for (whole seconds, inclusive), or None for the whole log."""
        if not self.ts_ns:
            return None
        return max(1, self.ts_ns // NS_PER_S - RESUME_MARGIN_S)


def parse_timestamp_ns(text: str) -> int:
    """Docker's RFC 3339 timestamp with up to nine fraction digits (trailing zeros trimmed) as Unix ns."""
    whole, dot, rest = text.partition(".")
    fraction, zone = "", "Z"
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
    else:
        for marker in ("Z", "+", "-"):
            cut = whole.rfind(marker, 10)  # past the date's own dashes
            if cut != -1:
                whole, zone = whole[:cut], whole[cut:]
                break
    moment = datetime.fromisoformat(whole + ("+00:00" if zone in ("Z", "") else zone))
    return int(moment.timestamp()) * NS_PER_S + int((fraction + "000000000")[:9])


def split_message(frame: bytes) -> tuple[int, bytes]:
    """A message of a timestamped log stream: (timestamp ns, the output bytes as the job wrote them)."""
    stamp, _, payload = frame.partition(b" ")
    return parse_timestamp_ns(stamp.decode("ascii")), payload


class ResumeFilter:
    """Decides, message by message, which bytes the spool still lacks. Pure: no I/O."""

    def __init__(self, cursor: LogCursor, spool_size: int) -> None:
        self.cursor = LogCursor(**asdict(cursor))
        self.anchored = cursor.ts_ns == 0
        self.seen_at_anchor = 0
        self.excess = max(0, spool_size - cursor.spool_bytes)  # bytes already in the spool past the cursor

    def feed(self, ts_ns: int, payload: bytes) -> bytes:
        """The part of this message to append to the spool (often all of it, b"" when already there)."""
        if not self.anchored:
            if ts_ns == self.cursor.ts_ns:
                self.seen_at_anchor += 1
                self.anchored = self.seen_at_anchor >= self.cursor.at_ts
                return b""
            if ts_ns <= self.cursor.ts_ns + ANCHOR_LOST_AFTER_NS:
                return b""
            self.anchored = True
        if ts_ns == self.cursor.ts_ns:
            self.cursor.at_ts += 1
        else:
            self.cursor.ts_ns, self.cursor.at_ts = ts_ns, 1
        self.cursor.spool_bytes += len(payload)
        skip = min(self.excess, len(payload))
        self.excess -= skip
        return payload[skip:]


def copy_messages(frames: Iterable[bytes], spool: Path, cursor_file: Path) -> LogCursor:
    """Append what the spool lacks of `frames` (a timestamped log stream) and keep the cursor file current.
    Not safe concurrently for one allocation: the runtime runs one copier per container."""
    cursor = LogCursor.load(cursor_file)
    keep = ResumeFilter(cursor, spool.stat().st_size if spool.exists() else 0)
    saved_at = time.monotonic()
    # The agent's alone (0600), like a plain job's spool: no job reads another's output
    with open(os.open(spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab", buffering=0) as out:
        try:
            for frame in frames:
                data = memoryview(keep.feed(*split_message(frame)))
                while data:  # an unbuffered write may take only part; the cursor must never run ahead
                    data = data[out.write(data) or 0 :]
                if keep.cursor != cursor and time.monotonic() - saved_at >= CURSOR_SAVE_INTERVAL_S:
                    cursor = LogCursor(**asdict(keep.cursor))
                    cursor.save(cursor_file)
                    saved_at = time.monotonic()
        finally:
            if keep.cursor != cursor:
                keep.cursor.save(cursor_file)
    return keep.cursor
