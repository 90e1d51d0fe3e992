"""The workers of one model: which to try for a request, and the queue when all are busy."""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.balancing import Balancer, RoundRobin
from gateway.worker import Worker
from templates import OperationName

if TYPE_CHECKING:
    from gateway.affinity import Affinity


class QueueFull(Exception):
    """Too many requests are already waiting for a free worker of this pool."""


@dataclass(slots=True)
class Pool:
    """The workers of one model and how requests are spread over them."""

    model: str
    workers: tuple[Worker, ...]
    balancer: Balancer = field(default_factory=RoundRobin)
    max_waiting: int = 256
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def candidates(
        self,
        op: OperationName,
        tries: int,
        *,
        panic: bool = False,
        affinity: "Affinity | None" = None,
        accept: Callable[[Worker], bool] | None = None,
    ) -> list[Worker]:
        """Return the workers to try for `op`, in order; empty when none is available.
        `accept`, when given, narrows them further (a resumed stream's: not the worker that
        failed it, and only workers that can continue an answer)."""
        now = time.monotonic()
        workers = self.workers
        if accept is not None:
            workers = tuple(w for w in workers if accept(w))
        order = self.balancer.order
        if op == "chat":  # every worker serves chat: the usual case skips the test
            chosen = order(workers, lambda w: w.healthy(now) and w.has_room(), tries, affinity)
        else:
            chosen = order(
                workers, lambda w: w.serves(op) and w.healthy(now) and w.has_room(), tries, affinity
            )
        if not chosen and panic and not any(w.healthy(now) for w in self.able(op)):
            # Panic mode: every worker is down or ejected; trying them beats failing outright.
            chosen = order(workers, lambda w: w.serves(op) and w.has_room(), tries, affinity)
        return chosen

    def able(self, op: OperationName) -> list[Worker]:
        """The workers that can serve `op` at all, healthy or not."""
        return [w for w in self.workers if w.serves(op)]

    def all_busy(self, op: OperationName) -> bool:
        """True when some worker is healthy but every healthy one is at its max_concurrency."""
        now = time.monotonic()
        healthy = [w for w in self.able(op) if w.healthy(now)]
        return bool(healthy) and not any(w.has_room() for w in healthy)

    def retry_after_s(self) -> int:
        """Seconds until the first ejected worker is tried again (at least 1)."""
        now = time.monotonic()
        waits = [w.stats.ejected_until - now for w in self.workers if w.stats.ejected_until > now]
        return max(1, int(min(waits)) + 1) if waits else 1

    async def wait_for_room(self, timeout_s: float) -> None:
        """Wait until a request of this pool finishes; raise QueueFull or TimeoutError."""
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def entered(self, worker: Worker) -> None:
        """A request to `worker` starts."""
        worker.stats.in_flight += 1

    def left(self, worker: Worker) -> None:
        """A request to `worker` ended: free its slot and wake a request waiting for one."""
        worker.stats.in_flight -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
