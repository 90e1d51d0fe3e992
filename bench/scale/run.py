"""One scale run: pick micro-benchmark, then registration, start-up, memory, load, convergence.

Everything it starts (Redis, the upstream, the gateways, the load generator) is stopped at the
end, on Ctrl-C, SIGTERM or an error too (bench/procs.py's `Processes`).
"""

import argparse
import datetime
import os
import platform
from pathlib import Path
from typing import Any

from bench import stack, upstream
from bench.drivers import choose_driver
from bench.procs import Processes, pinning_available
from bench.report import write_json
from bench.run import RESULTS, _git_revision
from bench.scale import phases, pick, table
from bench.session import run_session
from bench.stack import shown
from registry import EmbeddedRedis


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="The gateway with a registry of thousands of workers.",
    )
    parser.add_argument("--workers", type=int, default=10_000, help="registry size")
    parser.add_argument("--models", type=int, default=1_000, help="models they serve")
    parser.add_argument("--quick", action="store_true", help="1,000 workers over 100 models")
    parser.add_argument("--concurrency", type=int, default=32, help="registering clients")
    parser.add_argument("--duration", type=int, default=5, help="seconds per load row")
    parser.add_argument("--warmup", type=int, default=1, help="seconds before each load row")
    parser.add_argument("--connections", type=int, default=32, help="of the load rows")
    parser.add_argument("--rounds", type=int, default=2, help="load rows, interleaved")
    parser.add_argument("--idle", type=float, default=4.0, help="seconds of idle CPU sampling")
    parser.add_argument("--sequential", type=int, default=200, help="registrations, one by one")
    parser.add_argument("--burst", type=int, default=1_000, help="concurrent registrations")
    parser.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.models = 1_000, 100
    if not 1 <= args.models <= args.workers <= 200_000:
        parser.error("need 1 <= --models <= --workers <= 200000")
    if not 1 <= args.concurrency <= 1_000 or not 1 <= args.connections <= 1_000:
        parser.error("--concurrency and --connections must be 1..1000")
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 30 or not 1 <= args.rounds <= 20:
        parser.error("--duration 1..120 s, --warmup 0..30 s, --rounds 1..20")
    if not 1 <= args.sequential <= 10_000 or not 1 <= args.burst <= 10_000:
        parser.error("--sequential and --burst must be 1..10000")
    if not 0 < args.idle <= 60:
        parser.error("--idle must be in (0, 60] s")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the scale benchmark; return the exit code."""
    args = parse_args(argv)
    return run_session(
        "bench.scale",
        lambda procs, redis: _run(args, procs, redis),
        keep_logs=args.keep_logs,
    )


def _run(args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis) -> int:
    pin = pinning_available() and not args.no_pin
    load_cpu, server_cpu = (0, 1) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {0})  # this process is a client too: keep it off CPU 1
    pool_size = max(1, args.workers // args.models)
    doc: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": _git_revision(),
        "settings": {**{k: v for k, v in vars(args).items() if k != "output"}, "pinned": pin},
    }
    doc["settings"].update(load_model=stack.MODEL, pool_size=pool_size)
    print(f"bench.scale: {args.workers} workers over {args.models} models, pinning {pin}")
    print("4. router micro-benchmark (in this process)")
    doc["pick"] = [r.as_dict() for r in pick.run_all(args.workers, args.models)]

    driver = choose_driver(args.load, procs, load_cpu)
    redis.start()
    if pin and redis.pid is not None:
        os.sched_setaffinity(redis.pid, {0})
    direct, upstream_kind = stack.start_upstream(procs, args.upstream, load_cpu)
    doc["settings"].update(upstream=upstream_kind, load_generator=driver.kind)
    ctx = phases.Context(
        procs, redis.url, direct.url.removesuffix(upstream.PATH), load_cpu, server_cpu
    )
    print(f"1. registering {args.workers} workers at {args.concurrency} clients")
    doc["register"] = phases.register(ctx, args.workers, args.models, args.concurrency)
    print("2-3. start-up and memory")
    full, follower, doc["start_up"] = phases.start_ups(ctx, doc["register"]["registered"])
    small = phases.small_gateway(ctx, pool_size)
    print(f"5. load at {args.connections} connections, {args.rounds} round(s)")
    gateways = [full, follower]
    doc["probe_leader"] = {"before_idle": phases.probe_leader(ctx, gateways)}
    doc["idle_cpu_pct"] = phases.idle_cpu_pct(
        {"full": full.child, "small": small.child, "follower": follower.child}, args.idle
    )
    targets = [
        stack.Target(
            "small", f"{pool_size} workers in all", small.base + stack.CHAT_PATH, small.child
        ),
        stack.Target("full", f"{args.workers} workers", full.base + stack.CHAT_PATH, full.child),
    ]
    rows = phases.load(
        ctx, driver, targets, args.connections, args.duration, args.warmup, args.rounds
    )
    doc["load"] = phases.load_document(rows)
    doc["probe_leader"]["after_load"] = phases.probe_leader(ctx, gateways)
    procs.stop(small.child)
    print(f"6. convergence: {args.sequential} one by one, then a burst of {args.burst}")
    doc["convergence"] = phases.convergence(
        ctx, full, follower, args.sequential, args.burst, args.models
    )
    doc["probe_leader"]["at_end"] = phases.probe_leader(ctx, gateways)
    doc["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg_at_end": list(os.getloadavg()),
        "python": platform.python_version(),
    }
    print()
    print(table.render(doc, rows))
    write_json(args.output, doc)
    print(f"results written to {shown(args.output)}")
    return 0
