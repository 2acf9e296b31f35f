"""The busy slot of the request being handled (see `busy.py`), kept in a context variable so that a long
poll can give it back when it starts waiting, without the handler passing it along."""

from __future__ import annotations

import contextvars
from collections.abc import Callable

current: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("work_slot", default=None)


def release_current() -> None:
    """Give back the slot of the request being handled, if it holds one: it is about to wait, not work.
    Idempotent."""
    release = current.get()
    if release is not None:
        release()
