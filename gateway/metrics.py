"""The gateway's Prometheus metrics, on a registry the application owns.

Labels stay bounded: `model` is a registered model (or "unknown"), `worker` a worker's label
(scheme://host:port/path, never a header or a query), `route` a route template. With several
processes, each writes its values to files in `metrics_multiproc_dir` (prometheus_client's
multiprocess mode, switched on by PROMETHEUS_MULTIPROC_DIR in every process's environment)
and a scrape of any process sums them. There the parent (`--processes N`) owns the embedded
Redis and writes how often it restarted it to `EMBEDDED_RESTARTS_FILE` in that directory.
"""

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

RegistrySize = Callable[[], Mapping[str, int]]  # model -> number of its workers
WorkerHealth = Callable[[], Iterable[tuple[str, str, str]]]  # (model, worker label, state)
WorkerLoad = Callable[[], Iterable[tuple[str, str, int]]]  # (model, worker label, in flight)
Restarts = Callable[[], int]  # times the embedded Redis was started again

# In the multiprocess directory, not a `.db` file: prometheus_client reads only those.
EMBEDDED_RESTARTS_FILE = "embedded_redis_restarts"

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_TOKENS_PER_S_BUCKETS = (1, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)


class MetricsConfigError(ValueError):
    """Multiprocess metrics were asked for but cannot work in this process."""


class Metrics:
    """Every metric of one gateway process, and the scrape of them all."""

    def __init__(self, *, multiproc_dir: Path | None = None) -> None:
        self._multiproc_dir = multiproc_dir
        if multiproc_dir is not None:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise MetricsConfigError(
                    f"metrics_multiproc_dir is {multiproc_dir}, but prometheus_client is not in "
                    f"multiprocess mode: start every gateway process with "
                    f"PROMETHEUS_MULTIPROC_DIR={multiproc_dir} in its environment"
                )
            if not multiproc_dir.is_dir():
                raise MetricsConfigError(
                    f"metrics_multiproc_dir {multiproc_dir} is not a directory; create it "
                    "(empty) before the gateway processes start"
                )
            # Values go to files; the scrape reads every process's files, plus what this
            # process computes at scrape time (the registry size).
            self._values = CollectorRegistry()
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.registry, path=str(multiproc_dir)
            )
        else:
            self._values = self.registry = CollectorRegistry()
        self._restarts = _RestartsCollector()
        self.registry.register(self._restarts)
        if multiproc_dir is not None and (multiproc_dir / EMBEDDED_RESTARTS_FILE).exists():
            # The supervising parent runs the embedded Redis and counts its restarts.
            self.watch_embedded_redis(_CountFile(multiproc_dir / EMBEDDED_RESTARTS_FILE))
        reg = self._values
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Load gauges move twice per request: counted in plain ints and written to the gauges
        # only when read (`sync_load`), which saves the request path two locked writes each.
        self.in_progress = 0
        self._load: WorkerLoad = lambda: ()
        self._synced_in_flight: dict[tuple[str, str], int] = {}

        self._requests = Counter(
            "gateway_requests",
            "Requests answered, by route family, route, model and HTTP status.",
            ["family", "route", "model", "status"],
            registry=reg,
        )
        self._request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the end of the answer (the whole stream, for a stream).",
            ["family", "model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=reg,
        )
        self._in_progress = Gauge(
            "gateway_requests_in_progress",
            "Requests being handled.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._upstream_seconds = Histogram(
            "gateway_upstream_duration_seconds",
            "Time of one call to a worker, by its outcome (HTTP status, timeout or error).",
            ["model", "worker", "status"],
            buckets=_LATENCY_BUCKETS_S,
            registry=reg,
        )
        self._ttft_seconds = Histogram(
            "gateway_upstream_ttft_seconds",
            "Time from sending a streamed request to a worker to its first piece of answer.",
            ["model", "worker"],
            buckets=_TTFT_BUCKETS_S,
            registry=reg,
        )
        self._retries = Counter(
            "gateway_upstream_retries",
            "Requests tried again on another worker of the pool.",
            ["model"],
            registry=reg,
        )
        self._resumes = Counter(
            "gateway_stream_resumes",
            "Streams whose worker failed midway: continued on another worker (resumed), or "
            "ended with an error because none could continue them (failed).",
            ["model", "outcome"],
            registry=reg,
        )
        self._ejections = Counter(
            "gateway_worker_ejections",
            "Times a worker was taken out of its pool after failures.",
            ["model", "worker"],
            registry=reg,
        )
        self._worker_in_flight = Gauge(
            "gateway_worker_in_flight",
            "Requests being sent to or answered by the worker.",
            ["model", "worker"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._redis_errors = Counter(
            "gateway_redis_errors",
            "Redis calls that failed, by the part of the gateway that made them.",
            ["component"],
            registry=reg,
        )
        self._auth_refused = Counter(
            "gateway_auth_refused",
            "Requests refused for their credentials: missing (401) or not accepted (403).",
            ["access", "reason"],
            registry=reg,
        )
        self._tokens = Counter(
            "gateway_tokens",
            "Tokens of answers, by model, worker, kind (prompt, completion, cached) and whether "
            "they were estimated (the worker reported none).",
            ["model", "worker", "kind", "estimated"],
            registry=reg,
        )
        self._tokens_per_s = Histogram(
            "gateway_upstream_tokens_per_second",
            "Completion tokens per second of one answer: from its first piece to its end for a "
            "stream, over the whole call for a whole answer.",
            ["model", "worker"],
            buckets=_TOKENS_PER_S_BUCKETS,
            registry=reg,
        )
        self._usage_dropped = Counter(
            "gateway_usage_dropped",
            "Usage records dropped because Redis was unreachable for long and the buffer was full.",
            registry=reg,
        )
        self._token_series: dict[tuple[str, str, bool], tuple[Any, Any, Any]] = {}
        self._before_scrape: list[Callable[[], None]] = []
        self._rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused with 429 because their API key was over a limit.",
            ["limit"],
            registry=reg,
        )

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE_LATEST

    @property
    def multiprocess(self) -> bool:
        """Whether values are shared through files with the other gateway processes."""
        return self._multiproc_dir is not None

    def scrape(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        for hook in self._before_scrape:
            hook()
        self.sync_load()
        return generate_latest(self.registry)

    def before_scrape(self, hook: Callable[[], None]) -> None:
        """Call `hook` before each scrape (to add what was counted since in plain ints)."""
        self._before_scrape.append(hook)

    def watch_load(self, load: WorkerLoad) -> None:
        """Report each worker's requests in flight, read from `load` when synced."""
        self._load = load

    def sync_load(self) -> None:
        """Write the current load (requests in progress, in flight per worker) to its gauges.

        Called at each scrape; with several processes also every second, since a scrape of
        one process reads the others' values from their files.
        """
        self._in_progress.set(self.in_progress)
        synced = self._synced_in_flight
        for model, worker, count in self._load():
            if synced.get((model, worker)) != count:
                synced[(model, worker)] = count
                self._child(self._worker_in_flight, (model, worker)).set(count)

    def watch_registry(self, size: RegistrySize) -> None:
        """Report the registry's size at each scrape, read from `size` (model -> workers)."""
        self.registry.register(_RegistryCollector(size))

    def watch_workers(self, health: WorkerHealth) -> None:
        """Report each worker's health at each scrape, read from `health`."""
        self.registry.register(_HealthCollector(health))

    def watch_embedded_redis(self, restarts: Restarts) -> None:
        """Report how often the embedded Redis was restarted, read from `restarts` when scraped."""
        self._restarts.source = restarts

    def close(self) -> None:
        """Tell the multiprocess files this process is gone (its live gauges drop out)."""
        if self._multiproc_dir is not None:
            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), str(self._multiproc_dir)
            )

    # Requests, recorded by the gateway's middleware.

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        # `labels()` takes a lock and checks every value on each call; on the request path
        # the same few series are hit again and again, so keep their children at hand.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_started(self) -> None:
        self.in_progress += 1

    def request_finished(
        self, family: str, route: str, model: str, status: int, seconds: float
    ) -> None:
        self.in_progress -= 1
        self._child(self._requests, (family, route, model, str(status))).inc()
        self._child(self._request_seconds, (family, model)).observe(seconds)

    # Workers, recorded where the gateway calls them.

    def observe_upstream(self, model: str, worker: str, status: int | str, seconds: float) -> None:
        """Record one call to `worker`: status is the HTTP status, "timeout" or "error"."""
        self._child(self._upstream_seconds, (model, worker, str(status))).observe(seconds)

    def observe_ttft(self, model: str, worker: str, seconds: float) -> None:
        """Record the time to the first piece of a streamed answer."""
        self._ttft_seconds.labels(model, worker).observe(seconds)

    def tokens(
        self, model: str, worker: str, estimated: bool, prompt: int, completion: int, cached: int
    ) -> None:
        """Count one answer's tokens."""
        series = self._token_series.get((model, worker, estimated))
        if series is None:
            flag = "true" if estimated else "false"
            series = self._token_series[(model, worker, estimated)] = (
                self._tokens.labels(model, worker, "prompt", flag),
                self._tokens.labels(model, worker, "completion", flag),
                self._tokens.labels(model, worker, "cached", flag),
            )
        series[0].inc(prompt)
        series[1].inc(completion)
        if cached:
            series[2].inc(cached)

    def observe_tokens_per_second(self, model: str, worker: str, rate: float) -> None:
        """Record the completion tokens per second of one answer."""
        self._child(self._tokens_per_s, (model, worker)).observe(rate)

    def usage_dropped(self, records: int) -> None:
        """Count usage records lost to a full buffer."""
        self._usage_dropped.inc(records)

    def retry(self, model: str) -> None:
        """Count a request moved on to another worker of `model`'s pool."""
        self._retries.labels(model).inc()

    def stream_resumed(self, model: str, outcome: str) -> None:
        """Count a stream of `model` broken midway: "resumed" on another worker, or "failed"."""
        self._resumes.labels(model, outcome).inc()

    def ejected(self, model: str, worker: str) -> None:
        """Count `worker` taken out of rotation."""
        self._ejections.labels(model, worker).inc()

    def forget_worker(self, model: str, worker: str) -> None:
        """Drop the gauges of a worker that left the registry, so they do not linger."""
        self._children = {
            key: child for key, child in self._children.items() if worker not in key[1]
        }
        self._token_series = {
            key: series for key, series in self._token_series.items() if key[1] != worker
        }
        self._synced_in_flight.pop((model, worker), None)
        if self._multiproc_dir is not None:
            return  # prometheus_client cannot remove series in multiprocess mode
        with contextlib.suppress(KeyError):
            self._worker_in_flight.remove(model, worker)

    # Redis and access control.

    def redis_error(self, component: str) -> None:
        """Count a failed Redis call by `component` ("follower", "request", "rate_limit", ...)."""
        self._redis_errors.labels(component).inc()

    def auth_refused(self, access: str, reason: str) -> None:
        """Count a request refused for its credentials ("missing" or "rejected")."""
        self._auth_refused.labels(access, reason).inc()

    def rate_limited(self, limit: str) -> None:
        """Count a 429 for `limit` (requests_per_minute, max_concurrent, tokens_per_minute,
        tokens_per_day or budget)."""
        self._rate_limited.labels(limit).inc()


class _RegistryCollector(Collector):
    """Reads the size of the registry view when scraped, so it is never stale."""

    def __init__(self, size: RegistrySize) -> None:
        self._size = size

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sizes = self._size()
        models = GaugeMetricFamily(
            "gateway_registry_models", "Models with at least one registered worker."
        )
        models.add_metric([], len(sizes))
        workers = GaugeMetricFamily(
            "gateway_registry_workers", "Registered workers, by model.", labels=["model"]
        )
        for model, count in sorted(sizes.items()):
            workers.add_metric([model], count)
        yield models
        yield workers


class _HealthCollector(Collector):
    """Reads every worker's health from the view when scraped (never stale, nothing to forget)."""

    def __init__(self, health: WorkerHealth) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily(
            "gateway_worker_healthy",
            "1 when the worker is in its pool's rotation, 0 when it is ejected or down.",
            labels=["model", "worker", "state"],
        )
        for model, worker, state in self._health():
            healthy.add_metric([model, worker, state], 0 if state in ("down", "ejected") else 1)
        yield healthy


class _RestartsCollector(Collector):
    """Reads the embedded Redis's restart count when scraped; nothing without one."""

    def __init__(self) -> None:
        self.source: Restarts | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self.source is not None:
            yield CounterMetricFamily(
                "gateway_embedded_redis_restarts",
                "Times the embedded Redis (valkey) exited and was started again.",
                value=self.source(),
            )


def record_embedded_restarts(multiproc_dir: Path, count: int) -> None:
    """Write the embedded Redis's restart count for the processes sharing `multiproc_dir`."""
    target = multiproc_dir / EMBEDDED_RESTARTS_FILE
    partial = target.with_suffix(".partial")
    partial.write_text(str(count), encoding="ascii")
    os.replace(partial, target)  # a scrape never reads a half-written number


class _CountFile:
    """A count another process writes to a file; the last one read if it cannot be read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._last = 0  # a counter must not go back, even when the file is briefly gone

    def __call__(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            self._last = max(self._last, int(self._path.read_text(encoding="ascii")))
        return self._last
