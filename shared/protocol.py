"""Which agent protocol versions a coordinator serves: its own major, and a minor within one of its own.

So a fleet upgrades one side at a time: agents of 1.1 keep working with a coordinator of 1.0 and of 1.2,
and a coordinator of 1.1 serves agents of 1.0, 1.1 and 1.2. A different major version is refused. Pure.
"""

from __future__ import annotations

MINOR_SKEW = 1


def parse(version: str) -> tuple[int, int]:
    """`"1.2"` → (1, 2). Raises ValueError on anything else (the header comes from the wire)."""
    major, dot, minor = version.strip().partition(".")
    if not (dot and major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        raise ValueError(f"not a protocol version: {version[:40]!r} (expected MAJOR.MINOR, e.g. 1.0)")
    if len(major) > 6 or len(minor) > 6:
        raise ValueError(f"not a protocol version: {version[:40]!r} (numbers too large)")
    return int(major), int(minor)


def served_range(coordinator: str) -> str:
    """The versions a coordinator of version `coordinator` serves, as a person reads them: `1.0 to 1.2`."""
    major, minor = parse(coordinator)
    return f"{major}.{max(0, minor - MINOR_SKEW)} to {major}.{minor + MINOR_SKEW}"


def refusal(coordinator: str, agent: str) -> str | None:
    """None if a coordinator speaking `coordinator` serves an agent speaking `agent`; else the one-line reason,
    naming both versions and which side to upgrade."""
    try:
        theirs = parse(agent)
    except ValueError as exc:
        return f"agent sent {exc}; this coordinator speaks protocol {coordinator}"
    ours = parse(coordinator)
    if theirs[0] == ours[0] and abs(theirs[1] - ours[1]) <= MINOR_SKEW:
        return None
    older = "agent" if theirs < ours else "coordinator"
    return (
        f"agent speaks protocol {agent}, coordinator speaks {coordinator} (it serves "
        f"{served_range(coordinator)}): upgrade the {older}"
    )
