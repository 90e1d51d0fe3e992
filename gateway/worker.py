"""A registered worker as the request path sees it: compiled plan, live stats, passive health.

Passive health counts what real requests see: `Ejection.after_failures` failures in a row
(connect errors, timeouts, 5xx) take a worker out of rotation for a back-off that doubles
with each ejection in a row, up to `Ejection.max_s`. A success resets the count. The active
health checker (gateway/health.py) sets `active`; a worker it sees come back is forgiven at
once.
"""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from yarl import URL

from gateway.live import Window
from gateway.redact import Redactor
from registry import Health, Load, WorkerRecord
from templates import OperationName, WorkerPlan


@dataclass(frozen=True, slots=True)
class Ejection:
    """Passive health: how many consecutive failures eject a worker, and for how long."""

    after_failures: int = 3
    base_s: float = 5.0
    max_s: float = 300.0


RECENT_ERRORS = 10  # failures kept per worker for the dashboard, newest last


@dataclass(slots=True)
class WorkerStats:
    """Live state of one worker in this process.

    `succeeded` and `failed` take the call's start and end (`time.perf_counter()`) for the
    dashboard's figures (gateway/live.py), made on a worker's first call.
    """

    in_flight: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""  # always redacted: it is shown in the listing
    last_error_at: float | None = None
    ejected_until: float = 0.0  # time.monotonic() deadline; 0 when not ejected
    ejections: int = 0  # consecutive ejections; the back-off doubles with each
    active: Literal["unknown", "up", "down"] = "unknown"
    active_since: float | None = None
    active_reason: str = ""
    report: Load | None = None  # what the worker's /metrics last said (shared by the prober)
    others: int = 0  # requests at the worker from elsewhere, as of that report

    def load(self) -> int:
        """Requests the worker is busy with: this process's now, and the others' last reported.

        A report counts every request the worker had, this process's included; what it had
        beyond this process's count when the report arrived is the others' share.
        """
        return self.in_flight + self.others

    # For the dashboard: ejections in all, the last minute's calls, the last few failures.
    ejected_total: int = 0
    window: Window | None = None
    recent_errors: deque[tuple[float, str]] | None = None

    def succeeded(self, started: float, ended: float) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self.ejections = 0
        window = self.window
        if window is None:
            window = self.window = Window(started)
        window.record(ended, ended - started, True)

    def failed(self, reason: str, ejection: Ejection | None, started: float, ended: float) -> bool:
        """Count a failure; return True when it ejects the worker."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        self.last_error_at = now = time.time()
        if self.window is None:
            self.window = Window(started)
        self.window.record(ended, ended - started, False)
        if self.recent_errors is None:
            self.recent_errors = deque(maxlen=RECENT_ERRORS)
        self.recent_errors.append((now, reason))
        if ejection is None or self.consecutive_failures < ejection.after_failures:
            return False
        if self.ejected_until > time.monotonic():
            return False
        backoff_s = min(ejection.base_s * 2**self.ejections, ejection.max_s)
        self.ejected_until = time.monotonic() + backoff_s
        self.ejections += 1
        self.ejected_total += 1
        return True

    def state(self, now: float) -> str:
        if self.active == "down":
            return "down"
        if self.ejected_until > now:
            return "ejected"
        return "up" if self.active == "up" else "unknown"

    def probed(self, health: Health | None) -> None:
        """Take the active health checker's view of the worker."""
        if health is None:
            self.active, self.active_since, self.active_reason = "unknown", None, ""
            self.report, self.others = None, 0
            return
        if health.state == "up" and self.active == "down":
            # The worker is back: forget the passive ejection too, so it carries traffic now.
            self.ejected_until = 0.0
            self.ejections = 0
            self.consecutive_failures = 0
        self.active, self.active_since, self.active_reason = (
            health.state,
            health.since,
            health.reason,
        )
        load = health.load
        self.report = load
        self.others = 0 if load is None else max(0, load.running + load.waiting - self.in_flight)


@dataclass(frozen=True, slots=True)
class Worker:
    """A registered worker compiled for the hot path."""

    record: WorkerRecord
    plan: WorkerPlan
    label: str  # scheme://host:port/path, safe to show (no query, no credentials)
    probe_target: str  # what an active health probe checks: the health URL, or host:port
    redact: Redactor  # hides the worker's own secrets in anything it sends back
    # Where its load is read: its metrics_url, else /metrics at the host of an OpenAI-speaking
    # worker (vLLM, SGLang, llama.cpp publish there), read only when load-aware balancing
    # needs it (`metrics_given` False).
    metrics_url: str | None
    seed: int  # its rendezvous hash seed (gateway/affinity.py): the same in every process
    stats: WorkerStats = field(default_factory=WorkerStats)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def metrics_given(self) -> bool:
        return self.record.metrics_url is not None

    def healthy(self, now: float) -> bool:
        stats = self.stats
        return stats.active != "down" and stats.ejected_until <= now

    def has_room(self) -> bool:
        limit = self.record.max_concurrency
        return limit is None or self.stats.in_flight < limit

    def serves(self, op: OperationName) -> bool:
        return op in self.plan.operations

    @classmethod
    def compile(cls, record: WorkerRecord, stats: WorkerStats | None = None) -> "Worker":
        plan = record.compile()
        url = URL(plan.operations["chat"].url)
        label = f"{url.scheme}://{url.host}:{url.port}{url.path}"
        base = URL(plan.base_url)
        target = record.health_url or f"tcp://{base.host}:{base.port}"
        redact = Redactor.of(
            record.header.values(),
            (record.req_url_template, record.health_url, record.metrics_url),
        )
        metrics = record.metrics_url
        if metrics is None and plan.protocol == "openai" and base.host:
            # The same scheme, host and port as the worker's URL: inside the allow-list too.
            metrics = str(base.origin().with_path("/metrics"))
        seed = int(record.id[:16], 16)  # the id is a hex digest of the worker's identity
        return cls(record, plan, label, target, redact, metrics, seed, stats or WorkerStats())
