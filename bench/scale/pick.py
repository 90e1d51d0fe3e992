"""In-process cost of the router at a registry size: load, pick a worker, apply a change.

Records are built as the gateway builds them (`WorkerRecord.from_spec(WorkerSpec(...))`) and
loaded with `Router.load`, so the pools are the ones a gateway would hold for that registry.
"""

import statistics
import time
from dataclasses import dataclass

from bench.scale.specs import BODY, EXTRACT, model_of
from bench.stack import MODEL
from gateway.router import Router
from registry import Change, WorkerRecord, WorkerSpec

_BASE_URL = "http://127.0.0.1:9"
_REPETITIONS = 7
_REP_BUDGET_S = 0.05
_MAX_PICKS_PER_REP = 200_000
_APPLIES = 200


@dataclass(frozen=True, slots=True)
class PickResult:
    """What one registry size costs the router."""

    label: str
    workers: int
    models: int
    pool_size: int
    load_ms: float
    pick_ns: float
    pick_ns_runs: list[float]
    apply_put_us: float

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "workers": self.workers,
            "models": self.models,
            "pool_size": self.pool_size,
            "load_ms": round(self.load_ms, 1),
            "pick_ns_median": round(self.pick_ns),
            "pick_ns_runs": [round(v) for v in self.pick_ns_runs],
            "apply_put_us": round(self.apply_put_us, 1),
        }


def records(count: int, models: int, path: str = "w") -> list[WorkerRecord]:
    """Build `count` records over `models` models, as the register route does."""
    built = []
    for index in range(count):
        spec = WorkerSpec(
            model_name=model_of(index, models),
            req_url_template=f"{_BASE_URL}/{path}/{index}",
            body=BODY,
            response_extract=EXTRACT,
            owner="bench-scale",
        )
        built.append(WorkerRecord.from_spec(spec))
    return built


def measure(label: str, count: int, models: int) -> PickResult:
    """Load a router with `count` workers; time the load, a pick and a put."""
    router = Router()
    loaded = records(count, models)
    started = time.perf_counter()
    router.load(1, loaded, {})
    load_ms = (time.perf_counter() - started) * 1000.0
    pool = router.pool(MODEL)
    if pool is None:
        raise RuntimeError(f"the router has no pool for {MODEL!r}")
    runs = [_pick_ns(router) for _ in range(_REPETITIONS)]
    return PickResult(
        label=label,
        workers=count,
        models=models,
        pool_size=len(pool.workers),
        load_ms=load_ms,
        pick_ns=statistics.median(runs),
        pick_ns_runs=runs,
        apply_put_us=_apply_put_us(router, models),
    )


def _pick_ns(router: Router) -> float:
    """Return ns per `pool(MODEL).candidates("chat", 3)` over one bounded repetition."""
    clock = time.perf_counter_ns
    picks = 0
    started = clock()
    deadline = started + int(_REP_BUDGET_S * 1e9)
    while picks < _MAX_PICKS_PER_REP:
        for _ in range(100):
            pool = router.pool(MODEL)
            assert pool is not None
            pool.candidates("chat", 3)
        picks += 100
        if clock() >= deadline:
            break
    return (clock() - started) / picks


def _apply_put_us(router: Router, models: int) -> float:
    """Return the median µs of applying one new worker's put event (spread over the models)."""
    added = records(_APPLIES, models, path="new")
    timings = []
    for record in added:
        change = Change(v=router.version + 1, op="put", id=record.id, record=record)
        started = time.perf_counter()
        router.apply(change)
        timings.append((time.perf_counter() - started) * 1e6)
    return statistics.median(timings)


def run_all(workers: int, models: int) -> list[PickResult]:
    """Measure the small registry, the full one, and the full one as a single model."""
    small_pool = max(1, workers // models)
    return [
        measure(f"{small_pool} workers, 1 model", small_pool, 1),
        measure(f"{workers} workers, {models} models", workers, models),
        measure(f"{workers} workers, 1 model", workers, 1),
    ]
