"""The shared deadline sweeper: overdue work is cancelled and told apart from other cancels."""

import asyncio

import pytest

from gateway.deadlines import Deadlines


async def wait_with_deadline(deadlines: Deadlines, seconds: float, work_s: float) -> str:
    task = asyncio.current_task()
    assert task is not None
    deadlines.arm(task, seconds)
    try:
        await asyncio.sleep(work_s)
        return "done"
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            raise
        return "expired"
    finally:
        if deadlines.disarm(task):
            task.uncancel()


async def test_overdue_work_is_cancelled_and_work_in_time_is_not() -> None:
    deadlines = Deadlines(tick_s=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow, quick = await asyncio.gather(
        wait_with_deadline(deadlines, 0.1, 5.0), wait_with_deadline(deadlines, 1.0, 0.05)
    )
    assert (slow, quick) == ("expired", "done")
    assert 0.1 <= loop.time() - started < 1.0  # within a tick or two of the deadline
    assert len(deadlines) == 0


async def test_a_cancel_that_is_not_the_deadline_passes_through() -> None:
    deadlines = Deadlines(tick_s=0.02)
    task = asyncio.create_task(wait_with_deadline(deadlines, 5.0, 5.0))
    await asyncio.sleep(0.05)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_the_task_is_not_left_cancelling_after_an_expired_deadline() -> None:
    deadlines = Deadlines(tick_s=0.02)
    assert await wait_with_deadline(deadlines, 0.05, 5.0) == "expired"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # later awaits in the same task are not cancelled
