"""asyncio helpers that both sides need."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel `tasks` and wait until they have ended, whatever they raised.

    Unlike `with suppress(CancelledError): await task`, a cancellation of the *calling* task that arrives
    during the wait still propagates: suppressing it would leave the caller running after it was told to stop.
    """
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:  # mark every outcome as seen, so no "exception was never retrieved" warning
        if task.done() and not task.cancelled():
            task.exception()
