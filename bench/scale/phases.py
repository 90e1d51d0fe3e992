"""The measured phases of a scale run, each bounded in count and time.

Process layout when pinning (two CPUs): the benchmark process itself, Redis, the upstream and
the load generator on CPU 0; the gateway being measured on CPU 1.
"""

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench import loop, stack
from bench.drivers import Driver
from bench.procs import BenchError, Child, Processes
from bench.report import Row, Sample
from bench.scale import client, converge, redis_info
from bench.scale.gateways import Gateway, start_timed, wait_ready
from bench.scale.gateways import start as start_gateway
from bench.scale.specs import encoded, model_of, spec

FULL_PREFIX = "scale"
EMPTY_PREFIX = "scale-empty"
SMALL_PREFIX = "scale-small"


@dataclass(frozen=True, slots=True)
class Context:
    """What every phase needs: processes, Redis, the upstream and the CPU layout."""

    procs: Processes
    redis_url: str
    upstream_base: str
    load_cpu: int | None
    server_cpu: int | None


def register(ctx: Context, workers: int, models: int, concurrency: int) -> dict[str, Any]:
    """Register `workers` workers through a fresh gateway's HTTP API; then stop it."""
    conn = redis_info.client(ctx.redis_url)
    before = redis_info.used_memory(conn)
    gateway, _ = start_gateway(ctx.procs, "registrar", ctx.redis_url, FULL_PREFIX, ctx.server_cpu)
    wait_ready(gateway)
    bodies = encoded([spec(ctx.upstream_base, i, model_of(i, models)) for i in range(workers)])
    cpu_before = gateway.child.cpu_s()
    result = loop.run(client.register_all(gateway.base, bodies, concurrency))
    cpu_ms = (gateway.child.cpu_s() - cpu_before) * 1000.0
    summary = result.summary()
    summary["gateway_cpu_ms_per_registration"] = round(cpu_ms / workers, 3)
    # Stopped so the next full gateway starts fresh and takes the probe lease it releases.
    ctx.procs.stop(gateway.child, timeout_s=10.0)
    after = redis_info.used_memory(conn)
    summary["concurrency"] = concurrency
    summary["redis_used_memory_delta_bytes"] = after - before
    summary["redis_bytes_per_worker"] = round((after - before) / workers, 1)
    summary["redis_keys_bytes"] = redis_info.key_bytes(conn, FULL_PREFIX)
    return summary


def start_ups(ctx: Context, workers: int) -> tuple[Gateway, Gateway, dict[str, Any]]:
    """Time fresh gateways on the empty and the full registry; return the full ones kept.

    The first full gateway takes the probe lease (it then probes every worker every
    probe_interval_s); the second only follows the registry, which isolates the view's memory.
    """
    empty, empty_start = start_timed(
        ctx.procs, "gw-empty", ctx.redis_url, EMPTY_PREFIX, ctx.server_cpu, expect_workers=0
    )
    ctx.procs.stop(empty.child)
    full, full_start = start_timed(
        ctx.procs, "gw-full", ctx.redis_url, FULL_PREFIX, ctx.server_cpu, expect_workers=workers
    )
    # The follower shares CPU 0 with the load generator; it is idle during the load rows.
    follower, follower_start = start_timed(
        ctx.procs, "gw-follower", ctx.redis_url, FULL_PREFIX, ctx.load_cpu, expect_workers=workers
    )
    empty_rss = empty_start.rss_ready_bytes
    document = {
        "empty": empty_start.as_dict(),
        "full_probe_leader": full_start.as_dict(),
        "full_follower": follower_start.as_dict(),
        "rss_per_worker_bytes": {
            "follower": round((follower_start.rss_ready_bytes - empty_rss) / workers, 1),
            "probe_leader": round((full_start.rss_ready_bytes - empty_rss) / workers, 1),
            "probe_leader_after_listing": round(
                (full_start.rss_listed_bytes - empty_rss) / workers, 1
            ),
        },
    }
    return full, follower, document


def small_gateway(ctx: Context, pool_size: int) -> Gateway:
    """Start a gateway on a registry of `pool_size` workers, all of the load model."""
    gateway, _ = start_gateway(ctx.procs, "gw-small", ctx.redis_url, SMALL_PREFIX, ctx.server_cpu)
    wait_ready(gateway)
    bodies = encoded([spec(ctx.upstream_base, i, stack.MODEL) for i in range(pool_size)])
    result = loop.run(client.register_all(gateway.base, bodies, 4))
    if result.failures:
        raise BenchError(f"registering the small registry failed: {result.first_failure}")
    return gateway


def probe_leader(ctx: Context, gateways: list[Gateway]) -> str:
    """Return the name of the gateway holding the full registry's probe lease."""
    pid = redis_info.probe_leader_pid(redis_info.client(ctx.redis_url), FULL_PREFIX)
    return next((g.name for g in gateways if g.child.pid == pid), f"pid {pid}")


def idle_cpu_pct(children: dict[str, Child], seconds: float) -> dict[str, float]:
    """Return each child's CPU use (% of one core) over `seconds` of no requests."""
    before = {name: child.cpu_s() for name, child in children.items()}
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    return {
        name: round(100.0 * (child.cpu_s() - before[name]) / elapsed, 1)
        for name, child in children.items()
    }


@contextlib.contextmanager
def moved_to(children: list[Child], cpu: int | None, back_to: int | None) -> Iterator[None]:
    """Run `children` on `cpu` meanwhile (no-op without pinning), then on `back_to` again."""
    if cpu is None or back_to is None:
        yield
        return
    for child in children:
        os.sched_setaffinity(child.pid, {cpu})
    try:
        yield
    finally:
        for child in children:
            if child.alive():
                os.sched_setaffinity(child.pid, {back_to})


def load(
    ctx: Context,
    driver: Driver,
    targets: list[stack.Target],
    connections: int,
    duration_s: int,
    warmup_s: int,
    rounds: int,
) -> list[Row]:
    """Drive each target for `duration_s`, `rounds` times interleaved; return the rows.

    While one target is driven the other gateways move to the load generator's CPU: the full
    registry's gateway probes its workers in the background and must not slow the small one.
    """
    for target in targets:
        stack.check_gateway(target)
    rows = [Row(t.name, t.what, connections) for t in targets]
    for round_index in range(rounds):
        for row, target in zip(rows, targets, strict=True):
            others = [t.child for t in targets if t is not target]
            with moved_to(others, ctx.load_cpu, ctx.server_cpu):
                _row(driver, target, row, connections, duration_s, warmup_s)
            result = row.samples[-1].result
            print(
                f"  round {round_index + 1} {row.name:<10} {result.rps:7.0f} req/s "
                f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms errors {result.errors}"
            )
    return rows


def _row(
    driver: Driver,
    target: stack.Target,
    row: Row,
    connections: int,
    duration_s: int,
    warmup_s: int,
) -> None:
    if warmup_s:
        driver.run(target, connections, warmup_s)
    before = target.child.cpu_s()
    result = driver.run(target, connections, duration_s)
    row.samples.append(Sample(result, target.child.cpu_s() - before))


def load_document(rows: list[Row]) -> dict[str, Any]:
    """Return the rows as JSON, with the full registry's req/s over the small one's."""
    small, full = rows
    ratios = [
        f.result.rps / s.result.rps
        for s, f in zip(small.samples, full.samples, strict=True)
        if s.result.rps
    ]
    return {
        "rows": [row.as_dict(None) for row in rows],
        "rps_ratio_full_over_small": round(statistics.median(ratios), 3) if ratios else None,
        "rps_ratio_per_round": [round(r, 3) for r in ratios],
    }


def convergence(
    ctx: Context, a: Gateway, b: Gateway, sequential: int, burst: int, models: int
) -> dict[str, Any]:
    """Measure A -> Redis -> B: one registration at a time, then a burst."""
    seq = loop.run(converge.sequential(a.base, b.base, ctx.upstream_base, sequential, models))
    bursts = [
        loop.run(converge.burst(a.base, b.base, ctx.upstream_base, burst, connections))
        for connections in (burst, min(burst, 64))
    ]
    return {"sequential": seq.summary(), "burst": bursts[0], "burst_64_connections": bursts[1]}
