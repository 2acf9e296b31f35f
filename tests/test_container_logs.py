"""Copying a container's log into the spool: resuming at any point (the agent killed between any two writes)
yields every byte exactly once."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.runtime.container_logs import (
    NS_PER_S,
    LogCursor,
    ResumeFilter,
    copy_messages,
    parse_timestamp_ns,
    split_message,
)

T0 = 1_700_000_000 * NS_PER_S


def test_docker_timestamps_parse_to_nanoseconds() -> None:
    assert parse_timestamp_ns("2023-11-14T22:13:20.123456789Z") == T0 + 123_456_789
    assert parse_timestamp_ns("2023-11-14T22:13:20.5Z") == T0 + 500_000_000  # trailing zeros trimmed
    assert parse_timestamp_ns("2023-11-14T22:13:20Z") == T0
    assert parse_timestamp_ns("2023-11-15T00:13:20.000000001+02:00") == T0 + 1
    assert split_message(b"2023-11-14T22:13:20Z hello world\n") == (T0, b"hello world\n")


def test_the_cursor_asks_from_a_second_before_its_message() -> None:
    assert LogCursor().since_s() is None
    assert LogCursor(T0 + 900_000_000, 1, 10).since_s() == T0 // NS_PER_S - 1


def replay(messages: list[tuple[int, bytes]], cursor: LogCursor, spool: bytes) -> bytes:
    keep = ResumeFilter(cursor, len(spool))
    return spool + b"".join(keep.feed(ts, payload) for ts, payload in messages)


# Messages as the engine keeps them: long lines are cut into parts with one timestamp, the last output
# has no newline, and timestamps may repeat.
MESSAGES = [
    (T0 + 1, b"first\n"),
    (T0 + 2, b"x" * 16384),
    (T0 + 2, b"xx\n"),
    (T0 + 2, b"same nanosecond\n"),
    (T0 + 5, b"after\n"),
    (T0 + 2 * NS_PER_S, b"no newline"),
]
WHOLE = b"".join(payload for _, payload in MESSAGES)


def test_a_fresh_copy_takes_everything() -> None:
    assert replay(MESSAGES, LogCursor(), b"") == WHOLE


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(MESSAGES)), st.integers(0, len(WHOLE)))
def test_resuming_from_any_cursor_and_any_longer_spool_gives_every_byte_once(
    copied: int, extra_bytes: int
) -> None:
    """The agent saved a cursor after `copied` messages, then wrote some more bytes before it died."""
    cursor = LogCursor()
    for ts, payload in MESSAGES[:copied]:
        cursor = LogCursor(
            ts, cursor.at_ts + 1 if ts == cursor.ts_ns else 1, cursor.spool_bytes + len(payload)
        )
    spool = WHOLE[: min(len(WHOLE), cursor.spool_bytes + extra_bytes)]
    assert replay(MESSAGES, cursor, spool) == WHOLE


def test_a_cursor_whose_message_is_gone_copies_on_after_a_while() -> None:
    """Rotated away (or a clock jump): once messages are clearly newer, stop waiting for the anchor."""
    cursor = LogCursor(T0 + 7, 1, 3)
    later = [(T0 + 8, b"skipped\n"), (T0 + 10 * NS_PER_S, b"kept\n")]
    assert replay(later, cursor, b"old") == b"oldkept\n"


def frames(messages: list[tuple[int, bytes]]) -> list[bytes]:
    stamp = "2023-11-14T22:13:20.{:09d}Z"
    return [stamp.format(ts - T0).encode() + b" " + payload for ts, payload in messages if ts - T0 < NS_PER_S]


def test_copy_messages_appends_and_keeps_the_cursor_file(tmp_path: Path) -> None:
    spool, cursor_file = tmp_path / "output.log", tmp_path / "log.cursor"
    first, second = frames(MESSAGES[:3]), frames(MESSAGES[:5])
    copy_messages(first, spool, cursor_file)
    assert LogCursor.load(cursor_file) == LogCursor(T0 + 2, 2, len(b"first\n") + 16387)
    copy_messages(second, spool, cursor_file)  # the engine sends all again: only the new part lands
    assert spool.read_bytes() == b"".join(payload for _, payload in MESSAGES[:5])
    assert spool.stat().st_mode & 0o777 == 0o600  # no job reads another's output
