"""One `python -m bench.streams` run: streams through one gateway, a soak, 1 vs N processes.

Everything it starts (Redis, the upstreams, the gateways, the clients) is stopped at the end,
on Ctrl-C, SIGTERM or an error too (bench/procs.py's `Processes`).
"""

import argparse
import dataclasses
import datetime
import os
import statistics
from pathlib import Path
from typing import Any

from bench import stack
from bench.drivers import choose_driver
from bench.load import run_subprocess
from bench.procs import BenchError, Processes, pinning_available
from bench.report import Row, Sample, table, write_json
from bench.run import RESULTS, _git_revision
from bench.session import run_session
from bench.stack import shown
from bench.streams import peer, phases
from bench.streams.client import raise_fd_limit
from bench.streams.rss import fd_limit
from registry import EmbeddedRedis

PHASES = ("streams", "soak", "processes", "peer", "resume")
_MIB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.streams",
        description="Streaming through the gateway, a compressed soak, and 1 vs N processes.",
    )
    parser.add_argument(
        "--phases", default="streams,soak,processes", help=f"comma-separated, of {PHASES}"
    )
    parser.add_argument(
        "--streams", default="1,1000", help="concurrent stream counts K, comma-separated"
    )
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream")
    parser.add_argument("--chunk-interval-ms", type=float, default=50.0)
    parser.add_argument("--stream-duration", type=float, default=5.0, help="s per stream row")
    parser.add_argument(
        "--burst", action="store_true", help="start all K streams at once (default: spread)"
    )
    parser.add_argument("--soak-s", type=int, default=180, help="soak length in seconds")
    parser.add_argument("--soak-connections", type=int, default=8)
    parser.add_argument("--soak-every", type=int, default=5, help="s between RSS samples")
    parser.add_argument("--processes", type=int, default=2, help="N of the N-process row")
    parser.add_argument("--connections", type=int, default=32, help="of the process rows")
    parser.add_argument("--duration", type=int, default=5, help="s per process row")
    parser.add_argument("--warmup", type=int, default=1, help="s before each process row")
    parser.add_argument("--rounds", type=int, default=2, help="process rows, interleaved")
    parser.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--output", type=Path, default=RESULTS / "streams.json")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not args.phases or not set(args.phases) <= set(PHASES):
        parser.error(f"--phases takes a subset of {','.join(PHASES)}")
    try:
        args.streams = sorted({int(k) for k in args.streams.split(",") if k.strip()})
    except ValueError:
        parser.error("--streams takes comma-separated numbers, e.g. 1,1000")
    if not args.streams or not 1 <= min(args.streams) <= max(args.streams) <= 5000:
        parser.error("--streams counts must be 1..5000")
    if not 1 <= args.chunks <= 10_000:
        parser.error("--chunks must be 1..10000")
    if not 1 <= args.chunk_interval_ms <= 10_000 or not 1 <= args.stream_duration <= 120:
        parser.error("--chunk-interval-ms must be 1..10000 and --stream-duration 1..120 s")
    if not 5 <= args.soak_s <= 3600 or not 1 <= args.soak_every <= 60:
        parser.error("--soak-s must be 5..3600 s and --soak-every 1..60 s")
    if not 1 <= args.soak_connections <= 1000 or not 1 <= args.connections <= 1000:
        parser.error("--soak-connections and --connections must be 1..1000")
    if not 2 <= args.processes <= 16 or not 1 <= args.rounds <= 20:
        parser.error("--processes must be 2..16 and --rounds 1..20")
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be 1..120 s and --warmup 0..30 s")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the streaming benchmark; return the exit code."""
    args = parse_args(argv)
    return run_session("bench.streams", lambda procs, redis: _run(args, procs, redis))


def _run(args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis) -> int:
    pin = pinning_available() and not args.no_pin
    pins = phases.Pins(0, 1) if pin else phases.Pins(None, None)
    # The gateway inherits this limit: 1,000 streams need ~2,000 descriptors in it.
    own_limit = raise_fd_limit()
    redis.start()
    if pin and redis.pid is not None:
        os.sched_setaffinity(redis.pid, {0})
    print(
        f"bench.streams: phases {','.join(args.phases)}; pinning "
        f"{'client+upstreams on CPU 0, gateway on CPU 1' if pin else 'off'}; "
        f"open-file limit {own_limit}",
        flush=True,
    )
    document: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": _git_revision(),
        "cpus": os.cpu_count(),
        "pinned": pin,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if "streams" in args.phases:
        document["streams"] = _streams(args, procs, redis, pins)
    if "soak" in args.phases or "processes" in args.phases:
        driver = choose_driver(args.load, procs, pins.load)
        direct, kind = stack.start_upstream(procs, args.upstream, pins.load)
        document["upstream"], document["load"] = kind, driver.kind
        if "soak" in args.phases:
            gateway = stack.start_gateway(procs, redis.url, pins.server, name="gateway-soak")
            stack.register_worker(gateway, direct.url)
            stack.check_gateway(gateway)
            print(
                f"\nsoak: {args.soak_s}s at {args.soak_connections} connections ({driver.kind}), "
                f"seed route, RSS every {args.soak_every}s",
                flush=True,
            )
            soaked = phases.soak(
                driver, gateway, args.soak_s, args.soak_connections, args.soak_every
            )
            procs.stop(gateway.child)
            document["soak"] = soaked
            print(_soak_summary(soaked))
        if "processes" in args.phases:
            # The soak's gateway already put the seed worker into this Redis.
            registered = "soak" in args.phases
            document["processes"] = _processes(args, procs, redis, direct.url, registered)
    if "peer" in args.phases:
        document["peer"] = _peer(args, procs, redis, pins)
    if "resume" in args.phases:
        document["resume"] = _resume(args, procs, redis, pins)
    write_json(args.output, document)
    print(f"\nresults written to {shown(args.output)}")
    return 0


def _streams(
    args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis, pins: phases.Pins
) -> dict[str, Any]:
    upstream = phases.start_sse_upstream(procs, args.chunks, args.chunk_interval_ms, pins.load)
    gateway = stack.start_gateway(procs, redis.url, pins.server, name="gateway-streams")
    url = phases.register_stream_worker(gateway, upstream)
    rest_bytes = gateway.child.rss_bytes()
    ramp_s = 0.0 if args.burst else args.chunks * args.chunk_interval_ms / 1000.0
    print(
        f"\nstreams: {args.chunks} chunks {args.chunk_interval_ms:g} ms apart, "
        f"K starts spread over {ramp_s:g}s, "
        f"{args.stream_duration:g}s per row; gateway open-file limit {fd_limit(gateway.child)}, "
        f"RSS at rest {rest_bytes / _MIB:.1f} MiB\n"
        "  (ms: TTFC = time to first chunk, dly = arrival - upstream's stamp; gwCPUs = gateway "
        "CPU seconds, gwRSS = its peak MiB)\n  " + phases.STREAM_HEADER,
        flush=True,
    )
    rows = phases.measure_streams(
        procs,
        gateway,
        {"direct": upstream.url, "gateway": url},
        args.streams,
        args.stream_duration,
        ramp_s,
        pins,
    )
    result = {
        "gateway_rss_at_rest_mib": round(rest_bytes / _MIB, 1),
        "gateway_fd_limit": fd_limit(gateway.child),
        "rows": rows,
    }
    procs.stop(gateway.child)
    procs.stop(upstream.child)
    return result


def _resume(
    args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis, pins: phases.Pins
) -> dict[str, Any]:
    """What `resume_streams` costs: the same streams with the model's setting off and on,
    alternated `rounds` times in one gateway; gateway CPU per stream, median of the rounds."""
    upstream = phases.start_sse_upstream(procs, args.chunks, args.chunk_interval_ms, pins.load)
    gateway = stack.start_gateway(procs, redis.url, pins.server, name="gateway-resume")
    url = phases.register_stream_worker(gateway, upstream)
    count = max(args.streams)
    ramp_s = 0.0 if args.burst else args.chunks * args.chunk_interval_ms / 1000.0
    print(
        f"\nresume: {count} concurrent streams of {args.chunks} chunks, {args.rounds} rounds, "
        "the model's resume_streams off then on (gateway CPU ms per stream)",
        flush=True,
    )
    rows: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in rows:
            stack.put_model_settings(gateway, phases.STREAM_MODEL, {"resume_streams": mode == "on"})
            (row,) = phases.measure_streams(
                procs, gateway, {mode: url}, [count], args.stream_duration, ramp_s, pins
            )
            if row["streams"]:
                rows[mode].append(1000.0 * row["gateway_cpu_s"] / row["streams"])
    medians = {mode: statistics.median(values) for mode, values in rows.items() if values}
    for mode, values in rows.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {mode:<4} median {medians.get(mode, 0.0):.2f} ms/stream (rounds: {spread})")
    if len(medians) == 2 and medians["off"]:
        print(f"  on/off: {medians['on'] / medians['off']:.2f}x gateway CPU per stream")
    procs.stop(gateway.child)
    procs.stop(upstream.child)
    return {"cpu_ms_per_stream": rows, "median": medians, "streams": count}


def _soak_summary(soaked: dict[str, Any]) -> str:
    first, last = soaked["rss_mib"][0][1], soaked["rss_mib"][-1][1]
    peak = max(rss for _, rss in soaked["rss_mib"])
    return (
        f"soak: {soaked['requests']} requests ({soaked['rps']:.0f}/s, {soaked['errors']} errors); "
        f"RSS {first:.1f} -> {last:.1f} MiB (peak {peak:.1f}); slope "
        f"{soaked['slope_mib_per_min']:+.3f} MiB/min overall, "
        f"{soaked['slope_after_first_minute_mib_per_min']:+.3f} MiB/min after the first minute"
    )


def _processes(
    args: argparse.Namespace,
    procs: Processes,
    redis: EmbeddedRedis,
    upstream_url: str,
    registered: bool,
) -> dict[str, Any]:
    # Unpinned on purpose: N processes need every core, and the 1-process row must match.
    driver = choose_driver(args.load, procs, None)
    one = stack.start_gateway(procs, redis.url, None, name="gateway-1p")
    many = stack.start_gateway(
        procs, redis.url, None, name="gateway-np", extra=["--processes", str(args.processes)]
    )
    if not registered:
        stack.register_worker(one, upstream_url)
    gateways = [
        dataclasses.replace(one, name="gw-1proc", what="gateway, 1 process"),
        dataclasses.replace(
            many, name=f"gw-{args.processes}proc", what=f"gateway, {args.processes} processes"
        ),
    ]
    for gateway in gateways:
        stack.check_gateway(gateway)
    print(
        f"\nprocesses: 1 vs {args.processes} gateway processes at {args.connections} connections, "
        f"{args.rounds} round(s); NOT pinned (N processes need both cores; the load generator "
        "shares them). CPU is summed over each process group.",
        flush=True,
    )
    rows, text = phases.processes_rows(
        driver, gateways, args.connections, args.duration, args.warmup, args.rounds
    )
    print(text)
    return {"pinned": False, "rows": [row.as_dict(None) for row in rows]}


def _peer(
    args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis, pins: phases.Pins
) -> dict[str, Any]:
    command = peer.binary()
    if command is None:
        print(f"\npeer: {peer.MISSING}")
        return {"missing": True}
    upstream = phases.start_sse_upstream(procs, args.chunks, args.chunk_interval_ms, pins.load)
    gateway = stack.start_gateway(procs, redis.url, pins.server, name="gateway-peer")
    url = phases.register_stream_worker(gateway, upstream)
    base = upstream.url.removesuffix("/chat/completions")
    try:
        litellm = peer.start_litellm(
            procs, command, base, procs.log_dir, pins.server, model=phases.STREAM_MODEL
        )
    except BenchError as exc:
        print(f"\npeer: LiteLLM did not start; no row. {exc}")
        return {"missing": False, "error": str(exc)}
    targets = [dataclasses.replace(gateway, name="gateway", url=url), litellm]
    print(
        f"\npeer: non-streamed OpenAI chat at {args.connections} connections (bench/load.py), "
        f"{args.rounds} round(s), each server on CPU {pins.server}",
        flush=True,
    )
    rows = [Row(t.name, t.what, args.connections) for t in targets]
    for _ in range(args.rounds):
        for row, target in zip(rows, targets, strict=True):
            before = target.child.cpu_s()
            result = run_subprocess(
                procs, target.url, peer.BODY, args.connections, args.duration, cpu=pins.load
            )
            row.samples.append(Sample(result, target.child.cpu_s() - before))
    print(table(rows))
    procs.stop(litellm.child)
    return {"rows": [row.as_dict(None) for row in rows]}
