"""cancel_and_wait: the clean-up that must not swallow a cancellation of its caller."""

import asyncio

from shared.aio import cancel_and_wait


async def _slow_to_cancel(started: asyncio.Event) -> None:
    """Like an HTTP request that closes its connection when cancelled: it ends a while after the request."""
    started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)
        raise


async def test_a_cancellation_that_arrives_during_the_clean_up_reaches_the_caller() -> None:
    started, cleaning = asyncio.Event(), asyncio.Event()

    async def caller() -> None:
        inner = asyncio.create_task(_slow_to_cancel(started))
        await started.wait()
        cleaning.set()
        await cancel_and_wait(inner)
        await asyncio.sleep(3600)  # where a swallowed cancellation would leave the caller running

    outer = asyncio.create_task(caller())
    await cleaning.wait()
    await asyncio.sleep(0.05)  # the caller is now inside cancel_and_wait
    outer.cancel()
    await asyncio.wait({outer}, timeout=5)
    assert outer.cancelled(), "the caller kept running after it was cancelled"


async def test_it_waits_for_the_tasks_to_end_and_keeps_their_errors_quiet() -> None:
    started = asyncio.Event()
    slow = asyncio.create_task(_slow_to_cancel(started))

    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await started.wait()
    await cancel_and_wait(slow, failed)
    assert slow.cancelled()
    assert isinstance(failed.exception(), RuntimeError)
