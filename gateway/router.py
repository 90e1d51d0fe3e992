"""The in-memory view of the registry: model -> pool of compiled workers.

The view is fed by the registry follower (snapshot + change events) and by this process's own
writes; the request path only reads it, so choosing a worker never waits on Redis.

A worker is available when the active health checker has not marked it down (shared by every
process through Redis), it is not ejected by this process's passive health (gateway/worker.py),
and it is below its `max_concurrency`.

Model settings (balancing, fallbacks, aliases; registry/model_settings.py) are part of the
view too: those stored in Redis arrive like worker records, and win over the config file's.
"""

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from gateway.affinity import PrefixAffinity
from gateway.balancing import (
    Balancer,
    LeastLoad,
    LeastOutstanding,
    RoundRobin,
    SmoothWeighted,
    Strategy,
)
from gateway.errors import GatewayError, NoHealthyWorker, unknown_model
from gateway.pool import Pool
from gateway.worker import Worker
from registry import Change, Health, ModelRecord, ModelSettings, WorkerRecord
from templates import TemplateError

log = logging.getLogger(__name__)


class Router:
    """Model -> Pool; implements the registry follower's ViewSink."""

    def __init__(
        self,
        strategy: Strategy = "round_robin",
        max_waiting: int = 256,
        models: Mapping[str, ModelSettings] | None = None,
    ) -> None:
        self.version = 0
        self.loaded = False
        self.connected = False
        self.reason = "waiting for the first snapshot from Redis"
        self._strategy: Strategy = strategy
        self._max_waiting = max_waiting
        self._workers: dict[str, Worker] = {}
        self._by_model: dict[str, dict[str, Worker]] = {}
        self._pools: dict[str, Pool] = {}
        self._health: dict[str, Health] = {}
        self._configured: dict[str, ModelSettings] = dict(models or {})
        self._stored: dict[str, ModelRecord] = {}
        # Told (model, worker label) when a worker leaves the view, to drop its metrics.
        self.on_removed: Callable[[str, str], None] | None = None

    def pool(self, model: str) -> Pool | None:
        return self._pools.get(model)

    def models(self) -> list[str]:
        """The names a client can ask for: models with workers, aliases, models that only
        fall back to others."""
        return sorted(set(self._pools).union(n for n in self._named() if self._answers(n)))

    def knows(self, model: str) -> bool:
        """Whether a request for `model` has somewhere to go (its metrics label is its own)."""
        return model in self._pools or self._answers(model)

    def nowhere(self, model: str) -> GatewayError:
        """The error for a call for `model` that has nowhere to go: 503 while the registry is
        not loaded, else 404 naming the closest models."""
        if not self.loaded:
            return NoHealthyWorker(
                f"the registry is not loaded yet ({self.reason}); retry shortly",
                headers={"Retry-After": "1"},
            )
        return unknown_model(model, self.models())

    def _answers(self, model: str) -> bool:
        settings = self.settings_of(model)
        return settings is not None and (settings.alias is not None or bool(settings.fallbacks))

    def settings_of(self, model: str) -> ModelSettings | None:
        """The model's settings: stored through the API, else from the config file."""
        stored = self._stored.get(model)
        return stored.settings if stored is not None else self._configured.get(model)

    def source_of(self, model: str) -> Literal["api", "config"] | None:
        if model in self._stored:
            return "api"
        return "config" if model in self._configured else None

    def stored(self, model: str) -> ModelRecord | None:
        return self._stored.get(model)

    def alias_of(self, model: str) -> ModelSettings | None:
        settings = self.settings_of(model)
        return settings if settings is not None and settings.alias is not None else None

    def balancing_of(self, model: str) -> Strategy:
        settings = self.settings_of(model)
        if settings is not None and settings.balancing is not None:
            return settings.balancing
        return self._strategy

    def model_names(self) -> list[str]:
        """Every model with workers or settings."""
        return sorted(set(self._pools).union(self._named()))

    def _named(self) -> set[str]:
        return set(self._stored).union(self._configured)

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

    def load(
        self,
        version: int,
        records: list[WorkerRecord],
        health: dict[str, Health],
        models: Iterable[ModelRecord] = (),
    ) -> None:
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
            worker.stats.probed(health.get(wid))
        self._by_model = {}
        for worker in workers.values():
            self._by_model.setdefault(worker.record.model_name, {})[worker.id] = worker
        before = {name: self.settings_of(name) for name in self._pools}
        self._stored = {record.name: record for record in models}
        for model in set(self._by_model) | set(self._pools):
            self._rebuild(model, renew=before.get(model) != self.settings_of(model))
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
        (it comes back as an event too) is harmless because every change is idempotent.
        """
        self._apply(change)
        if change.v == self.version + 1:
            self.version = change.v

    def _apply(self, change: Change) -> None:
        if change.op in ("model", "model_del"):
            self._apply_model(change)
            return
        previous = self._workers.get(change.id)
        if change.op == "health":
            if change.health is not None:
                self._health[change.id] = change.health
                if previous is not None:
                    previous.stats.probed(change.health)
        elif change.op == "put" and change.record is not None:
            if previous is not None and previous.record.__dict__ == change.record.__dict__:
                return
            compiled = self._compile(change.record, previous)
            if compiled is None:
                return
            compiled.stats.probed(self._health.get(change.id))
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

    def _apply_model(self, change: Change) -> None:
        name = change.id
        before = self.settings_of(name)
        if change.op == "model" and change.model is not None:
            self._stored[name] = change.model
        elif change.op == "model_del":
            self._stored.pop(name, None)
        pool = self._pools.get(name)
        if pool is not None and self.settings_of(name) != before:
            pool.balancer = self._balancer(name)

    def _rebuild(self, model: str, *, renew: bool = False) -> None:
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
            self._pools[model] = Pool(model, members, self._balancer(model), self._max_waiting)
        else:
            pool.workers = members
            if renew:
                pool.balancer = self._balancer(model)

    def _balancer(self, model: str) -> Balancer:
        strategy = self.balancing_of(model)
        if strategy == "prefix":
            settings = self.settings_of(model) or ModelSettings()
            return PrefixAffinity(
                settings.prefix_chars, settings.max_load_ratio, settings.min_spill_load
            )
        return _SIMPLE[strategy]()

    @staticmethod
    def _compile(record: WorkerRecord, previous: Worker | None) -> Worker | None:
        try:
            return Worker.compile(record, previous.stats if previous is not None else None)
        except (TemplateError, ValueError) as exc:
            log.error("skipping worker %s of %s: %s", record.id, record.model_name, exc)
            return None


_SIMPLE: dict[Strategy, Callable[[], Balancer]] = {
    "round_robin": RoundRobin,
    "weighted": SmoothWeighted,
    "least_outstanding": LeastOutstanding,
    "least_load": LeastLoad,
}
