"""How a pool orders its workers for one request: round-robin, smooth weighted, least
outstanding, least load; prefix affinity is in gateway/affinity.py.

Every strategy has the same synchronous shape: given the pool's workers, a `ready` test
(healthy, below its max_concurrency, serves the operation), how many to return and the
request's affinity (used by `prefix` only), return up to `tries` workers, the first to be
tried first and the others for failover.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.worker import Worker
from registry import Balancing

if TYPE_CHECKING:
    from gateway.affinity import Affinity

Strategy = Balancing
Ready = Callable[[Worker], bool]


class Balancer(Protocol):
    """Orders the available workers of a pool for one request: the first is tried first."""

    def order(
        self, workers: tuple[Worker, ...], ready: Ready, tries: int, affinity: "Affinity | None"
    ) -> list[Worker]:
        """Return up to `tries` workers among those `ready` accepts."""
        ...


class RoundRobin:
    """Each request starts at the next worker; failover goes on around the ring."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def order(
        self, workers: tuple[Worker, ...], ready: Ready, tries: int, affinity: "Affinity | None"
    ) -> list[Worker]:
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

    def order(
        self, workers: tuple[Worker, ...], ready: Ready, tries: int, affinity: "Affinity | None"
    ) -> list[Worker]:
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

    def order(
        self, workers: tuple[Worker, ...], ready: Ready, tries: int, affinity: "Affinity | None"
    ) -> list[Worker]:
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


class LeastLoad:
    """The worker least busy by its own /metrics and this process's count; ties round-robin.

    A worker's load is what its last report said it had from elsewhere (running and waiting
    requests beyond this process's own) plus this process's requests in flight now, per unit
    of weight; a tie goes to the lower KV cache use. Without reports it is least outstanding.
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def order(
        self, workers: tuple[Worker, ...], ready: Ready, tries: int, affinity: "Affinity | None"
    ) -> list[Worker]:
        count = len(workers)
        start = self._next % count
        self._next = start + 1
        best: int | None = None
        best_load = 0.0
        best_kv = 0.0
        for step in range(count):
            index = (start + step) % count
            worker = workers[index]
            if not ready(worker):
                continue
            stats = worker.stats
            load = (stats.in_flight + stats.others) / worker.record.weight
            if best is not None and load > best_load:
                continue
            report = stats.report
            kv = report.kv_usage or 0.0 if report is not None else 0.0
            if best is None or load < best_load or kv < best_kv:
                best, best_load, best_kv = index, load, kv
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
