"""How a pool orders its workers for one request: round-robin, smooth weighted, least outstanding.

Every strategy has the same synchronous shape: given the pool's workers and a `ready` test
(healthy, below its max_concurrency, serves the operation), return up to `tries` workers, the
first to be tried first and the others for failover.
"""

from collections.abc import Callable
from typing import Literal, Protocol

from gateway.worker import Worker

Strategy = Literal["round_robin", "weighted", "least_outstanding"]
Ready = Callable[[Worker], bool]


class Balancer(Protocol):
    """Orders the available workers of a pool for one request: the first is tried first."""

    def order(self, workers: tuple[Worker, ...], ready: Ready, tries: int) -> list[Worker]:
        """Return up to `tries` workers among those `ready` accepts."""
        ...


class RoundRobin:
    """Each request starts at the next worker; failover goes on around the ring."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def order(self, workers: tuple[Worker, ...], ready: Ready, tries: int) -> list[Worker]:
        count = len(workers)
        start = self._next % count
        chosen: list[Worker] = []
        # Stops as soon as `tries` are found: O(tries) when the pool is healthy, whatever its size.
        for step in range(count):
            index = (start + step) % count
            if ready(workers[index]):
                if not chosen:
                    self._next = index + 1
                chosen.append(workers[index])
                if len(chosen) == tries:
                    break
        return chosen


class SmoothWeighted:
    """Smooth weighted round-robin (as nginx does it): spread, not bursts, in weight ratio."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def order(self, workers: tuple[Worker, ...], ready: Ready, tries: int) -> list[Worker]:
        total = 0
        best: int | None = None
        current = self._current
        for index, worker in enumerate(workers):
            if not ready(worker):
                continue
            weight = worker.record.weight
            value = current.get(worker.id, 0) + weight
            current[worker.id] = value
            total += weight
            if best is None or value > current[workers[best].id]:
                best = index
        if best is None:
            return []
        current[workers[best].id] -= total
        if len(current) > 2 * len(workers):  # forget workers that left the pool
            ids = {w.id for w in workers}
            self._current = {k: v for k, v in current.items() if k in ids}
        return _then_the_rest(workers, ready, best, tries)


class LeastOutstanding:
    """The worker with the fewest requests in flight from this process; ties go round-robin."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def order(self, workers: tuple[Worker, ...], ready: Ready, tries: int) -> list[Worker]:
        count = len(workers)
        start = self._next % count
        self._next = start + 1
        best: int | None = None
        for step in range(count):
            index = (start + step) % count
            if ready(workers[index]) and (
                best is None or workers[index].stats.in_flight < workers[best].stats.in_flight
            ):
                best = index
        if best is None:
            return []
        return _then_the_rest(workers, ready, best, tries)


def _then_the_rest(
    workers: tuple[Worker, ...], ready: Ready, first: int, tries: int
) -> list[Worker]:
    count = len(workers)
    chosen = [workers[first]]
    for step in range(1, count):
        if len(chosen) == tries:
            break
        index = (first + step) % count
        if ready(workers[index]):
            chosen.append(workers[index])
    return chosen


BALANCERS: dict[Strategy, Callable[[], Balancer]] = {
    "round_robin": RoundRobin,
    "weighted": SmoothWeighted,
    "least_outstanding": LeastOutstanding,
}
