"""Which coordinators a client knows: `coordinator:` (agent.yaml), `url:` (the CLI's config) and the URLs a join
string carries take one https:// URL or a list of them.

Several coordinators serve one cluster when they share a PostgreSQL store; a client tries them in the order
given and moves to the next when one cannot be reached. The order is the operator's: the first is preferred.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def parse_coordinators(value: Any, field: str = "coordinator") -> tuple[str, ...]:
    """One URL or a list of them, as a tuple of https:// URLs without a trailing `/`, in order, each once.
    Raises ValueError with one line naming `field` (and the index of a bad entry of a list)."""
    if isinstance(value, str):
        return (_one(value, field),)
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{field}: expected an https:// URL or a list of them, got {value!r}")
    urls: list[str] = []
    for i, item in enumerate(value):
        url = _one(item, f"{field}[{i}]")
        if url not in urls:
            urls.append(url)
    return tuple(urls)


def _one(value: Any, field: str) -> str:
    text = value.strip().rstrip("/") if isinstance(value, str) else ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        parts = None
    # a `?` or `#`, even with nothing after it, would swallow the API path the clients append to the URL
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.path or set("?#") & set(text):
        raise ValueError(f"{field}: expected an https://HOST[:PORT] URL, got {value!r}")
    return text
