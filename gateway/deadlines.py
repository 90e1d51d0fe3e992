"""Coarse deadlines for many concurrent requests: one sweeping timer instead of one per request.

`asyncio.timeout()` arms and disarms a timer per use, and on the request path that was a few
percent of the gateway's CPU per request. Worker timeouts are whole seconds, so a deadline
that fires up to one tick late is as good: a request registers its task and due time in a dict,
and one timer, running only while something is registered, cancels the tasks that are overdue.
"""

import asyncio

TICK_S = 0.05


class Deadlines:
    """Tasks with a due time; an overdue task is cancelled and remembered as expired.

    Use as: `arm(task, seconds)`; around the awaited work, a CancelledError while
    `expired(task)` means the deadline passed; at the end always `disarm(task)`, and when it
    returns True, `task.uncancel()`.
    """

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeping: asyncio.TimerHandle | None = None

    def arm(self, task: asyncio.Task[object], seconds: float) -> None:
        """Cancel `task` once `seconds` have passed, unless it is disarmed first."""
        loop = task.get_loop()
        self._due[task] = loop.time() + seconds
        if self._sweeping is None:
            self._sweeping = loop.call_later(self._tick_s, self._sweep, loop)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether `task` was cancelled because its deadline passed."""
        return task in self._expired

    def disarm(self, task: asyncio.Task[object]) -> bool:
        """Forget `task`'s deadline; return whether it had expired (and cancelled the task)."""
        if self._due.pop(task, None) is not None:
            return False
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def __len__(self) -> int:
        return len(self._due)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        overdue = [task for task, when in self._due.items() if when <= now]
        for task in overdue:
            del self._due[task]
            self._expired.add(task)
            task.cancel()
        self._sweeping = loop.call_later(self._tick_s, self._sweep, loop) if self._due else None
