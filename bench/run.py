"""One benchmark run: start everything, measure each row, print and save, stop everything.

CPU 0 runs the load generator and the upstream, CPU 1 the server under test (bare proxy,
gateway or LiteLLM), so the server being measured never competes with the load for its core.
The N-process gateway is the exception: it needs every core, so it runs unpinned.
With `--baseline REF`, REF's gateway runs on the server CPU too, measured in the same rounds.
"""

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import baseline as bench_baseline
from bench import cache_aware
from bench import rows as bench_rows
from bench.baseline import Baseline
from bench.drivers import Driver, choose_driver
from bench.procs import BenchError, Processes, pinning_available
from bench.profiling import ProfileSetup, profile_gateway
from bench.report import (
    Row,
    Sample,
    against_baseline,
    floor_rps,
    legend,
    pair_line,
    table,
    versus,
    write_json,
)
from bench.session import run_session
from bench.stack import REPO, Target, shown
from bench.streams import peer
from registry import EmbeddedRedis

RESULTS = REPO / "bench" / "results"
_ALL = (*bench_rows.ROWS, *bench_rows.PHASES)


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
    parser.add_argument(
        "--ttft-connections",
        dest="connections_ttft",
        type=int,
        default=16,
        help="concurrent streams of the cache-aware rows (default 16)",
    )
    parser.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--profile", action="store_true", help="then profile the gateway")
    parser.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument(
        "--only",
        default=",".join(_ALL),
        help=f"comma-separated rows to measure, of {','.join(_ALL)} (default: all)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the gateway and gateway-openai rows served by the gateway of git "
        "commit REF (e.g. main~3), in the same run, and print current/baseline ratios",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=max(2, len(os.sched_getaffinity(0))),
        help="N of the gateway-xN row (default: one per CPU, at least 2)",
    )
    parser.add_argument(
        "--install-peers",
        action="store_true",
        help=f"first install LiteLLM into {shown(peer.VENV)} (for the litellm row)",
    )
    args = parser.parse_args(argv)
    args.only = frozenset(row.strip() for row in args.only.split(",") if row.strip())
    if not args.only or not args.only <= set(_ALL):
        parser.error(f"--only takes a subset of {','.join(_ALL)}")
    if not 2 <= args.processes <= 64:
        parser.error("--processes must be 2..64")
    if args.baseline is not None:
        if not args.baseline.strip() or args.baseline.startswith("-"):
            parser.error("--baseline takes a git ref: a branch, tag, sha or e.g. main~3")
        if not args.only & set(bench_rows.BASELINE_ROWS):
            parser.error(
                "--baseline measures gateway rows: keep gateway or gateway-openai in --only"
            )
    if args.profile and "gateway" not in args.only:
        parser.error("--profile profiles the gateway row: keep it in --only")
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
    if args.install_peers:
        try:
            peer.install()
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    return run_session("bench", lambda procs, redis: _run(args, procs, redis))


def _run(args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis) -> int:
    if args.baseline is None:
        return _run_rows(args, procs, redis, None, None)
    # Exported into the run's work dir, which the session removes at the end.
    baseline = bench_baseline.prepare(args.baseline, procs.log_dir / "baseline")
    # Its own Redis: the two gateways' registrations and change events never meet.
    baseline_redis = EmbeddedRedis(procs.log_dir / "redis-baseline", persist=False)
    try:
        return _run_rows(args, procs, redis, baseline, baseline_redis)
    finally:
        baseline_redis.stop()


def _run_rows(
    args: argparse.Namespace,
    procs: Processes,
    redis: EmbeddedRedis,
    baseline: Baseline | None,
    baseline_redis: EmbeddedRedis | None,
) -> int:
    pin = pinning_available() and not args.no_pin
    load_cpu, server_cpu = (0, 1) if pin else (None, None)
    driver = choose_driver(args.load, procs, load_cpu)
    for server in filter(None, (redis, baseline_redis)):
        server.start()
        if pin and server.pid is not None:
            os.sched_setaffinity(server.pid, {0})  # idle during the rows; keep it off CPU 1
    plan = bench_rows.Plan(
        args.only,
        args.upstream,
        args.processes,
        load_cpu,
        server_cpu,
        baseline,
        baseline_redis.url if baseline_redis is not None else "",
    )
    targets, upstream_kind = bench_rows.start(procs, redis.url, plan)
    phases = {name: targets.pop(name) for name in bench_rows.PHASES if name in targets}
    rss_start = _rss(targets)
    print(_header(args, upstream_kind, driver, pin, targets, baseline))
    rows = _measure(args, driver, targets)
    document = _document(args, rows, upstream_kind, driver, pin)
    document["baseline"] = _baseline(rows, baseline)
    document["rss_bytes"] = {"at_start": rss_start, "after_the_run": _rss(targets)}
    if phases:
        print("cache-aware rows: streamed chats, TTFT by balancing (bench/cache_aware.py)")
        setting = cache_aware.Setting(
            args.connections_ttft, args.duration, args.warmup, args.rounds, load_cpu
        )
        document["cache_aware"] = cache_aware.measure(procs, phases, setting)
    if rows:
        print()
        print(legend(rows))
        print()
        print(table(rows))
        print()
        _print_summary(document)
    for name, measured in document.get("cache_aware", {}).items():
        print()
        print(cache_aware.table(name, measured))
    print()
    write_json(args.output, document)
    print(f"results written to {shown(args.output)}")
    if args.profile:
        # The profiled gateway gets the server CPU to itself, as the measured one had.
        for target in _servers(targets):
            procs.stop(target.child, sig=signal.SIGINT)
        setup = ProfileSetup(
            procs, driver, redis.url, args.connections, args.duration, server_cpu, load_cpu
        )
        document["profile"] = profile_gateway(setup, args.profiler, RESULTS)
        write_json(args.output, document)
    return 0


def _header(
    args: argparse.Namespace,
    upstream_kind: str,
    driver: Driver,
    pin: bool,
    targets: dict[str, Target],
    baseline: Baseline | None,
) -> str:
    """Return the run's first line: what runs where, how long each row lasts, which code."""
    pinning = "load+upstream on CPU 0, server on CPU 1" if pin else "off"
    if pin and "gateway-xN" in targets:
        name = targets["gateway-xN"].name
        pinning += f" ({name} UNPINNED: its {args.processes} processes share every CPU)"
    return (
        f"bench: upstream={upstream_kind} load={driver.kind} pinning={pinning}; "
        f"rows of {args.duration}s at {args.connections} and 1 connection(s), "
        f"{args.rounds} round(s)"
        + (
            f"; baseline {baseline.ref} = {baseline.commit[:10]}, its gateway imported from "
            f"{baseline.gateway_file}"
            if baseline is not None
            else ""
        )
    )


def _servers(targets: dict[str, Target]) -> list[Target]:
    """Return the first target of each server process group, the upstream left out."""
    servers: dict[int, Target] = {}
    for row, target in targets.items():
        if row != "direct":
            servers.setdefault(target.child.pid, target)
    return list(servers.values())


def _rss(targets: dict[str, Target]) -> dict[str, int]:
    """Return the RSS of each server's process group, by the name of its first row."""
    return {target.name: target.child.rss_bytes() for target in _servers(targets)}


def _measure(args: argparse.Namespace, driver: Driver, targets: dict[str, Target]) -> list[Row]:
    rows = [Row(t.name, t.what, args.connections) for t in targets.values()]
    if args.connections != 1:
        at_one = [t for r, t in targets.items() if bench_rows.measured_at_one(r)]
        rows += [Row(t.name, t.what, 1) for t in at_one]
    by_name = {t.name: t for t in targets.values()}
    width = max((len(row.key) for row in rows), default=0) + 1
    for round_index in range(args.rounds):
        for row in rows:
            target = by_name[row.name]
            if args.warmup:
                driver.run(target, row.connections, args.warmup)
            before = target.child.cpu_s()
            result = driver.run(target, row.connections, args.duration)
            row.samples.append(Sample(result, target.child.cpu_s() - before))
            print(
                f"  round {round_index + 1} {row.key:<{width}}{result.rps:9.0f} req/s "
                f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms errors {result.errors}",
                flush=True,
            )
    return rows


def _print_summary(document: dict[str, Any]) -> None:
    """Print the ratios against LiteLLM, the added latency and the memory under the table."""
    versus_litellm = document["vs_litellm"]
    if versus_litellm:
        print(
            f"gateway x LiteLLM at {document['settings']['connections']} connections, "
            "one process each (issue target: >= 40x one LiteLLM worker):"
        )
    for name, ratio in versus_litellm.items():
        print(
            f"  {name:<16}{ratio['rps_x']:>7.1f}x the req/s, "
            f"{ratio['cpu_per_req_x_less']:.1f}x less CPU per request"
        )
    for name, added in document["added_p50_ms_at_1_connection"].items():
        print(f"added p50 latency at 1 connection, {name} - direct: {added:.3f} ms")
    baseline = document["baseline"]
    if baseline is not None:
        print(
            f"current ({document['git']}) / baseline {baseline['ref']} "
            f"({baseline['commit'][:10]}), medians; > 1x req/s is faster, < 1x CPU is cheaper:"
        )
        width = max(
            (len(f"{p['row']} at {p['connections']}") for p in baseline["pairs"]), default=0
        )
        for pair in baseline["pairs"]:
            print(pair_line(pair, width))
    start, after = document["rss_bytes"]["at_start"], document["rss_bytes"]["after_the_run"]
    print(
        "RSS after the run (at start): "
        + ", ".join(f"{n} {after[n] / 2**20:.1f} MiB ({start[n] / 2**20:.1f})" for n in after)
    )


def _document(
    args: argparse.Namespace, rows: list[Row], upstream_kind: str, driver: Driver, pin: bool
) -> dict[str, Any]:
    return {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": _git_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": list(os.getloadavg()),
            "python": platform.python_version(),
            "aiohttp": metadata.version("aiohttp"),
            "litellm": peer.version(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "rounds": args.rounds,
            "upstream": upstream_kind,
            "load_generator": driver.kind,
            "pinned": pin,
            "gateway_processes": args.processes,
            "rows": sorted(args.only),
        },
        "rows": [row.as_dict(floor_rps(rows, row.connections)) for row in rows],
        "added_p50_ms_at_1_connection": _added_p50(rows),
        "vs_litellm": _vs_litellm(rows, args.connections),
    }


def _baseline(rows: list[Row], baseline: Baseline | None) -> dict[str, Any] | None:
    """Return what the baseline was and each current row against its baseline row."""
    if baseline is None:
        return None
    pairs = []
    for connections in sorted({row.connections for row in rows}, reverse=True):
        for name in bench_rows.BASELINE_ROWS:
            pair = against_baseline(rows, name, baseline.row(name), connections)
            if pair is not None:
                pairs.append(pair)
    return {
        "ref": baseline.ref,
        "commit": baseline.commit,
        "gateway_file": str(baseline.gateway_file),
        "serve_flags": sorted(baseline.serve_flags),
        "pairs": pairs,
    }


def _added_p50(rows: list[Row]) -> dict[str, float]:
    """Return each proxy's p50 at 1 connection minus the direct row's: what the hop adds."""
    at_one = {row.name: row.median("p50_ms") for row in rows if row.connections == 1}
    direct = at_one.pop("direct", None)
    if direct is None:
        return {}
    return {name: round(p50 - direct, 3) for name, p50 in at_one.items()}


def _vs_litellm(rows: list[Row], connections: int) -> dict[str, dict[str, float]]:
    """Return the single-process gateway rows against LiteLLM's, where both were measured."""
    ratios = {name: versus(rows, name, "litellm", connections) for name in bench_rows.VERSUS}
    return {name: ratio for name, ratio in ratios.items() if ratio is not None}


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
