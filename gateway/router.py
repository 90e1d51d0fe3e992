"""The in-memory view of the registry: model -> pool of compiled workers, and balancing.

The view is fed by the registry follower (snapshot + change events) and by this process's own
writes; the request path only reads it, so choosing a worker never waits on Redis and costs
O(1) whatever the size of the registry.
"""

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from yarl import URL

from registry import Change, WorkerRecord
from templates import TemplateError, WorkerPlan

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerStats:
    """Live counters of one worker in this process."""

    in_flight: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_error_at: float | None = None

    def succeeded(self) -> None:
        self.successes += 1
        self.consecutive_failures = 0

    def failed(self, reason: str) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        self.last_error_at = time.time()


@dataclass(frozen=True, slots=True)
class Worker:
    """A registered worker compiled for the hot path."""

    record: WorkerRecord
    plan: WorkerPlan
    label: str  # scheme://host:port/path, safe to show (no query, no credentials)
    stats: WorkerStats = field(default_factory=WorkerStats)

    @property
    def id(self) -> str:
        return self.record.id

    @classmethod
    def compile(cls, record: WorkerRecord, stats: WorkerStats | None = None) -> "Worker":
        plan = record.compile()
        url = URL(plan.operations["chat"].plan.url.render({}, url_encode=True))
        label = f"{url.scheme}://{url.host}:{url.port}{url.path}"
        return cls(record, plan, label, stats or WorkerStats())


class Balancer(Protocol):
    """Orders a pool's workers for one request: the first is tried first."""

    def order(self, workers: tuple[Worker, ...], tries: int) -> list[Worker]: ...


class RoundRobin:
    """Each request starts at the next worker; failover goes on around the ring."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def order(self, workers: tuple[Worker, ...], tries: int) -> list[Worker]:
        count = len(workers)
        start = self._next % count
        self._next = start + 1
        if tries == 1 or count == 1:
            return [workers[start]]
        return [workers[(start + i) % count] for i in range(min(tries, count))]


@dataclass(slots=True)
class Pool:
    """The workers of one model and how requests are spread over them."""

    model: str
    workers: tuple[Worker, ...]
    balancer: Balancer = field(default_factory=RoundRobin)

    def candidates(self, tries: int) -> list[Worker]:
        return self.balancer.order(self.workers, tries)


class Router:
    """Model -> Pool; implements the registry follower's ViewSink."""

    def __init__(self) -> None:
        self.version = 0
        self.loaded = False
        self.connected = False
        self.reason = "registry not loaded yet"
        self._workers: dict[str, Worker] = {}
        self._by_model: dict[str, dict[str, Worker]] = {}
        self._pools: dict[str, Pool] = {}

    def pool(self, model: str) -> Pool | None:
        return self._pools.get(model)

    def models(self) -> list[str]:
        return sorted(self._pools)

    def workers(self) -> Iterable[Worker]:
        return self._workers.values()

    # ViewSink

    def set_connected(self, connected: bool, reason: str) -> None:
        self.connected = connected
        self.reason = reason

    def load(self, version: int, records: list[WorkerRecord]) -> None:
        old = self._workers
        workers: dict[str, Worker] = {}
        for record in records:
            previous = old.get(record.id)
            if previous is not None and previous.record == record:
                workers[record.id] = previous
                continue
            compiled = self._compile(record, previous)
            if compiled is not None:
                workers[record.id] = compiled
        self._workers = workers
        self._by_model = {}
        for worker in workers.values():
            self._by_model.setdefault(worker.record.model_name, {})[worker.id] = worker
        for model in set(self._by_model) | set(self._pools):
            self._rebuild(model)
        self.version = version
        self.loaded = True

    def apply(self, change: Change) -> None:
        """Apply a change event; the follower guarantees it is the next version."""
        self._apply(change)
        self.version = change.v

    def apply_local(self, change: Change) -> None:
        """Apply this process's own write at once, so it can read what it just wrote.

        The version advances only when the write is the next one; otherwise the change events
        in between are still to come from the channel, and re-applying this write after them
        (it comes back as an event too) is harmless because a put or a delete is idempotent.
        """
        self._apply(change)
        if change.v == self.version + 1:
            self.version = change.v

    def _apply(self, change: Change) -> None:
        previous = self._workers.get(change.id)
        if change.op == "put" and change.record is not None:
            if previous is not None and previous.record == change.record:
                return
            compiled = self._compile(change.record, previous)
            if compiled is None:
                return
            self._workers[change.id] = compiled
            self._by_model.setdefault(change.record.model_name, {})[change.id] = compiled
            self._rebuild(change.record.model_name)
        elif change.op == "del" and previous is not None:
            del self._workers[change.id]
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
            self._pools[model] = Pool(model, members)
        else:
            pool.workers = members

    @staticmethod
    def _compile(record: WorkerRecord, previous: Worker | None) -> Worker | None:
        try:
            return Worker.compile(record, previous.stats if previous is not None else None)
        except (TemplateError, ValueError) as exc:
            log.error("skipping worker %s of %s: %s", record.id, record.model_name, exc)
            return None
