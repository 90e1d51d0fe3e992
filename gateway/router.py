"""The in-memory view of the registry: model -> pool of compiled workers, health, balancing.

The view is fed by the registry follower (snapshot + change events) and by this process's own
writes; the request path only reads it, so choosing a worker never waits on Redis.

A worker is available when the active health checker has not marked it down (shared by every
process through Redis), it is not ejected by this process's passive health (consecutive
failures seen on real requests), and it is below its `max_concurrency`.
"""

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from yarl import URL

from registry import Change, Health, WorkerRecord
from templates import TemplateError, WorkerPlan

log = logging.getLogger(__name__)

Strategy = Literal["round_robin", "weighted", "least_outstanding"]


@dataclass(frozen=True, slots=True)
class Ejection:
    """Passive health: how many consecutive failures eject a worker, and for how long."""

    after_failures: int = 3
    base_s: float = 5.0
    max_s: float = 300.0


@dataclass(slots=True)
class WorkerStats:
    """Live state of one worker in this process."""

    in_flight: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    ejected_until: float = 0.0  # time.monotonic() deadline; 0 when not ejected
    ejections: int = 0  # consecutive ejections; the back-off doubles with each
    active: Literal["unknown", "up", "down"] = "unknown"
    active_since: float | None = None
    active_reason: str = ""

    def succeeded(self) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self.ejections = 0

    def failed(self, reason: str, ejection: Ejection | None) -> bool:
        """Count a failure; return True when it ejects the worker."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        self.last_error_at = time.time()
        if ejection is None or self.consecutive_failures < ejection.after_failures:
            return False
        if self.ejected_until > time.monotonic():
            return False
        backoff_s = min(ejection.base_s * 2**self.ejections, ejection.max_s)
        self.ejected_until = time.monotonic() + backoff_s
        self.ejections += 1
        return True

    def state(self, now: float) -> str:
        if self.active == "down":
            return "down"
        if self.ejected_until > now:
            return "ejected"
        return "up" if self.active == "up" else "unknown"


@dataclass(frozen=True, slots=True)
class Worker:
    """A registered worker compiled for the hot path."""

    record: WorkerRecord
    plan: WorkerPlan
    label: str  # scheme://host:port/path, safe to show (no query, no credentials)
    probe_target: str  # what an active health probe checks: the health URL, or host:port
    stats: WorkerStats = field(default_factory=WorkerStats)

    @property
    def id(self) -> str:
        return self.record.id

    def healthy(self, now: float) -> bool:
        stats = self.stats
        return stats.active != "down" and stats.ejected_until <= now

    def has_room(self) -> bool:
        limit = self.record.max_concurrency
        return limit is None or self.stats.in_flight < limit

    @classmethod
    def compile(cls, record: WorkerRecord, stats: WorkerStats | None = None) -> "Worker":
        plan = record.compile()
        url = URL(plan.operations["chat"].plan.url.render({}, url_encode=True))
        label = f"{url.scheme}://{url.host}:{url.port}{url.path}"
        base = URL(plan.base_url)
        target = record.health_url or f"tcp://{base.host}:{base.port}"
        return cls(record, plan, label, target, stats or WorkerStats())


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


BALANCERS: dict[str, type[RoundRobin] | type[SmoothWeighted] | type[LeastOutstanding]] = {
    "round_robin": RoundRobin,
    "weighted": SmoothWeighted,
    "least_outstanding": LeastOutstanding,
}


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

    def candidates(self, tries: int, *, panic: bool = False) -> list[Worker]:
        """Return the workers to try, in order; empty when none is available."""
        now = time.monotonic()
        workers = self.workers
        chosen = self.balancer.order(workers, lambda w: w.healthy(now) and w.has_room(), tries)
        if not chosen and panic and not any(w.healthy(now) for w in workers):
            # Panic mode: every worker is down or ejected; trying them beats failing outright.
            chosen = self.balancer.order(workers, Worker.has_room, tries)
        return chosen

    def all_busy(self) -> bool:
        """True when some worker is healthy but every healthy one is at its max_concurrency."""
        now = time.monotonic()
        healthy = [w for w in self.workers if w.healthy(now)]
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
            await asyncio.wait_for(waiter, timeout_s)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def released(self) -> None:
        """A request of this pool finished: wake one waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Router:
    """Model -> Pool; implements the registry follower's ViewSink."""

    def __init__(self, strategy: Strategy = "round_robin", max_waiting: int = 256) -> None:
        self.version = 0
        self.loaded = False
        self.connected = False
        self.reason = "waiting for the first snapshot from Redis"
        self._strategy = strategy
        self._max_waiting = max_waiting
        self._workers: dict[str, Worker] = {}
        self._by_model: dict[str, dict[str, Worker]] = {}
        self._pools: dict[str, Pool] = {}
        self._health: dict[str, Health] = {}
        # Told (model, worker label) when a worker leaves the view, to drop its metrics.
        self.on_removed: Callable[[str, str], None] | None = None

    def pool(self, model: str) -> Pool | None:
        return self._pools.get(model)

    def models(self) -> list[str]:
        return sorted(self._pools)

    def workers(self, model: str | None = None) -> Iterable[Worker]:
        """Every worker, or only `model`'s (found through the per-model index)."""
        if model is None:
            return self._workers.values()
        return self._by_model.get(model, {}).values()

    def worker(self, wid: str) -> Worker | None:
        return self._workers.get(wid)

    # ViewSink

    def set_connected(self, connected: bool, reason: str) -> None:
        self.connected = connected
        self.reason = reason

    def load(self, version: int, records: list[WorkerRecord], health: dict[str, Health]) -> None:
        old = self._workers
        workers: dict[str, Worker] = {}
        for record in records:
            previous = old.get(record.id)
            if previous is not None and previous.record.__dict__ == record.__dict__:
                workers[record.id] = previous
                continue
            compiled = self._compile(record, previous)
            if compiled is not None:
                workers[record.id] = compiled
        if self.on_removed is not None:
            for wid, gone in old.items():
                if wid not in workers:
                    self.on_removed(gone.record.model_name, gone.label)
        self._workers = workers
        self._health = dict(health)
        for wid, worker in workers.items():
            _set_active(worker.stats, health.get(wid))
        self._by_model = {}
        for worker in workers.values():
            self._by_model.setdefault(worker.record.model_name, {})[worker.id] = worker
        for model in set(self._by_model) | set(self._pools):
            self._rebuild(model)
        self.version = version
        self.loaded = True
        # The view is long-lived: keep the cyclic collector from walking it on every full
        # collection (with 10,000 workers that walk alone was ~150 ms, a p99 spike).
        gc.freeze()

    def apply(self, change: Change) -> None:
        """Apply a change event; the follower guarantees it is the next version."""
        self._apply(change)
        self.version = change.v

    def apply_local(self, change: Change) -> None:
        """Apply this process's own write at once, so it can read what it just wrote.

        The version advances only when the write is the next one; otherwise the change events
        in between are still to come from the channel, and re-applying this write after them
        (it comes back as an event too) is harmless because every change is idempotent.
        """
        self._apply(change)
        if change.v == self.version + 1:
            self.version = change.v

    def _apply(self, change: Change) -> None:
        previous = self._workers.get(change.id)
        if change.op == "health":
            if change.health is not None:
                self._health[change.id] = change.health
                if previous is not None:
                    _set_active(previous.stats, change.health)
        elif change.op == "put" and change.record is not None:
            if previous is not None and previous.record.__dict__ == change.record.__dict__:
                return
            compiled = self._compile(change.record, previous)
            if compiled is None:
                return
            _set_active(compiled.stats, self._health.get(change.id))
            self._workers[change.id] = compiled
            self._by_model.setdefault(change.record.model_name, {})[change.id] = compiled
            self._rebuild(change.record.model_name)
        elif change.op == "del" and previous is not None:
            del self._workers[change.id]
            if self.on_removed is not None:
                self.on_removed(previous.record.model_name, previous.label)
            self._health.pop(change.id, None)
            model = previous.record.model_name
            members = self._by_model.get(model, {})
            members.pop(change.id, None)
            if not members:
                self._by_model.pop(model, None)
            self._rebuild(model)

    def _rebuild(self, model: str) -> None:
        members = tuple(
            sorted(
                self._by_model.get(model, {}).values(),
                key=lambda w: (w.record.registered_at, w.id),
            )
        )
        pool = self._pools.get(model)
        if not members:
            self._pools.pop(model, None)
        elif pool is None:
            balancer = BALANCERS[self._strategy]()
            self._pools[model] = Pool(model, members, balancer, self._max_waiting)
        else:
            pool.workers = members

    @staticmethod
    def _compile(record: WorkerRecord, previous: Worker | None) -> Worker | None:
        try:
            return Worker.compile(record, previous.stats if previous is not None else None)
        except (TemplateError, ValueError) as exc:
            log.error("skipping worker %s of %s: %s", record.id, record.model_name, exc)
            return None


def _set_active(stats: WorkerStats, health: Health | None) -> None:
    if health is None:
        stats.active, stats.active_since, stats.active_reason = "unknown", None, ""
        return
    if health.state == "up" and stats.active == "down":
        # The worker is back: forget the passive ejection too, so it carries traffic now.
        stats.ejected_until = 0.0
        stats.ejections = 0
        stats.consecutive_failures = 0
    stats.active, stats.active_since, stats.active_reason = (
        health.state,
        health.since,
        health.reason,
    )
