"""One benchmark run: start everything, measure each row, print and save, stop everything.

CPU 0 runs the load generator and the upstream, CPU 1 the server under test (bare proxy or
gateway), so the server being measured never competes with the load for its core.
"""

import argparse
import datetime
import os
import platform
import signal
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import stack
from bench.drivers import Driver, choose_driver
from bench.procs import Processes, pinning_available
from bench.profiling import ProfileSetup, profile_gateway
from bench.report import Row, Sample, floor_rps, table, write_json
from bench.session import run_session
from bench.stack import REPO, Target, shown
from registry import EmbeddedRedis

RESULTS = REPO / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, latency and CPU per request of the gateway against its floor.",
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per row (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 s rows, no warm-up pass")
    parser.add_argument("--warmup", type=int, default=1, help="seconds before each row")
    parser.add_argument("--connections", type=int, default=32, help="for the load rows")
    parser.add_argument("--rounds", type=int, default=1, help="measure every row N times")
    parser.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--profile", action="store_true", help="then profile the gateway")
    parser.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2, 0
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be 1..120 s and --warmup 0..30 s")
    if not 1 <= args.connections <= 1000 or not 1 <= args.rounds <= 20:
        parser.error("--connections must be 1..1000 and --rounds 1..20")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    args = parse_args(argv)
    return run_session("bench", lambda procs, redis: _run(args, procs, redis))


def _run(args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis) -> int:
    pin = pinning_available() and not args.no_pin
    load_cpu, server_cpu = (0, 1) if pin else (None, None)
    driver = choose_driver(args.load, procs, load_cpu)
    redis.start()
    if pin and redis.pid is not None:
        os.sched_setaffinity(redis.pid, {0})  # idle during the rows; keep it off CPU 1
    direct, upstream_kind = stack.start_upstream(procs, args.upstream, load_cpu)
    bare = stack.start_bare_proxy(procs, direct.url, server_cpu)
    gateway = stack.start_gateway(procs, redis.url, server_cpu)
    stack.register_worker(gateway, direct.url)
    stack.check_gateway(gateway)
    rss_start = gateway.child.rss_bytes()
    print(
        f"bench: upstream={upstream_kind} load={driver.kind} "
        f"pinning={'load+upstream on CPU 0, server on CPU 1' if pin else 'off'} "
        f"rows of {args.duration}s at {args.connections} and 1 connection(s), "
        f"{args.rounds} round(s)"
    )
    rows = _measure(args, driver, [direct, bare, gateway])
    rss_after = {"gateway": gateway.child.rss_bytes(), "bare": bare.child.rss_bytes()}
    document = _document(args, rows, upstream_kind, driver, pin)
    document["rss_bytes"] = {"gateway_at_start": rss_start, **rss_after}
    print()
    print(table(rows))
    print()
    for name, added in document["added_p50_ms_at_1_connection"].items():
        print(f"added p50 latency at 1 connection, {name} - direct: {added:.3f} ms")
    print(
        f"RSS after the run: gateway {rss_after['gateway'] / 2**20:.1f} MiB "
        f"(at start {rss_start / 2**20:.1f} MiB), bare proxy {rss_after['bare'] / 2**20:.1f} MiB"
    )
    write_json(args.output, document)
    print(f"results written to {shown(args.output)}")
    if args.profile:
        procs.stop(gateway.child, sig=signal.SIGINT)
        setup = ProfileSetup(
            procs, driver, redis.url, args.connections, args.duration, server_cpu, load_cpu
        )
        document["profile"] = profile_gateway(setup, args.profiler, RESULTS)
        write_json(args.output, document)
    return 0


def _measure(args: argparse.Namespace, driver: Driver, targets: list[Target]) -> list[Row]:
    rows = [Row(t.name, t.what, args.connections) for t in targets]
    if args.connections != 1:
        rows += [Row(t.name, t.what, 1) for t in targets]
    by_name = {t.name: t for t in targets}
    for round_index in range(args.rounds):
        for row in rows:
            target = by_name[row.name]
            if args.warmup:
                driver.run(target.url, row.connections, args.warmup)
            before = target.child.cpu_s()
            result = driver.run(target.url, row.connections, args.duration)
            row.samples.append(Sample(result, target.child.cpu_s() - before))
            print(
                f"  round {round_index + 1} {row.key:<12} {result.rps:9.0f} req/s "
                f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms errors {result.errors}"
            )
    return rows


def _document(
    args: argparse.Namespace, rows: list[Row], upstream_kind: str, driver: Driver, pin: bool
) -> dict[str, Any]:
    by_key = {row.key: row for row in rows}
    direct_p50 = by_key["direct@1"].median("p50_ms")
    return {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": _git_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": list(os.getloadavg()),
            "python": platform.python_version(),
            "aiohttp": metadata.version("aiohttp"),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "rounds": args.rounds,
            "upstream": upstream_kind,
            "load_generator": driver.kind,
            "pinned": pin,
        },
        "rows": [row.as_dict(floor_rps(rows, row.connections)) for row in rows],
        "added_p50_ms_at_1_connection": {
            name: round(by_key[f"{name}@1"].median("p50_ms") - direct_p50, 3)
            for name in ("bare", "gateway")
        },
    }


def _git_revision() -> str | None:
    """Return HEAD's short hash, "+dirty" when the work tree differs (read-only commands)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "diff-index", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = head.stdout.strip()
    return f"{revision}+dirty" if revision and dirty.returncode == 1 else revision or None
