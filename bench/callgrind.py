"""Instructions per request under callgrind: the noise-free way to compare two versions.

Wall-clock CPU per request moves by 15-25% between runs on a shared machine; the number of
instructions a request costs does not. This starts the Python upstream and one gateway (from
`--tree`, any checkout of this project, served with this venv as `bench --baseline` does)
under `valgrind --tool=callgrind --instr-atstart=no`, registers the bench's seed-style
template worker and its `openai` worker, warms both routes up uninstrumented, then switches
instrumentation on and measures each route `--repeats` times, interleaved: exactly
`--requests` requests over `--connections` keep-alive connections, then a callgrind dump.
Instructions in the dump / requests is the figure. The dumps are kept in `--out` for
`callgrind_annotate`. Background loops are slowed so that they do not land in a window.

    python -m bench.callgrind --tree /tmp/old-checkout --repeats 3
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import baseline as bench_baseline
from bench import loop, stack
from bench.load import build_request
from bench.procs import BenchError, Processes, free_port, pinned, wait_http
from bench.session import run_session
from registry import EmbeddedRedis

# Seconds: long enough that none of these runs during a measured window.
QUIET = {
    "GATEWAY_REAP_INTERVAL_S": "1000",
    "GATEWAY_PROBE_INTERVAL_S": "1000",
    "GATEWAY_PROBE_LEASE_S": "3000",
    "GATEWAY_REGISTRY_CHECK_INTERVAL_S": "1000",
    "GATEWAY_USAGE_FLUSH_INTERVAL_MS": "60000",  # the most it accepts; ~0.3% if one lands
    # One string hash for every run: with random ones, dict layouts (and so the counts) of two
    # processes of the same code differ by up to ~1%.
    "PYTHONHASHSEED": "0",
}
_CONTROL_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    url: str
    body: bytes


async def _drive(url: str, body: bytes, requests: int, connections: int) -> int:
    """Send exactly `requests` POSTs over `connections` connections; return the non-200s."""
    host, port, raw = build_request(url, body)
    left = [requests]
    failed = [0]

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                failed[0] += head[9:12] != b"200"
                lower = head.lower()
                start = lower.index(b"content-length:") + len(b"content-length:")
                await reader.readexactly(int(lower[start : lower.index(b"\r\n", start)]))
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return failed[0]


def drive(route: Route, requests: int, connections: int) -> None:
    failed = loop.run(_drive(route.url, route.body, requests, connections))
    if failed:
        raise BenchError(f"{route.name}: {failed} of {requests} requests did not answer 200")


def control(pid: int, *args: str) -> None:
    """Run `callgrind_control ARGS PID` (instrumentation on/off, zero, dump)."""
    cmd = ["callgrind_control", *args, str(pid)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=_CONTROL_TIMEOUT_S)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")


def instructions(dump: Path) -> int:
    """Return the Ir total of one callgrind dump."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise BenchError(f"{dump} has no totals line")


def measure(args: argparse.Namespace, procs: Processes, redis: EmbeddedRedis) -> int:
    tree = Path(args.tree).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    gateway_file = bench_baseline.imported_from(tree)
    redis.start()
    direct, _ = stack.start_upstream(procs, "python", 0)
    port = free_port()
    env = {**stack.child_env(tree), **QUIET}
    flags = bench_baseline.serve_flags(tree)
    cmd = [sys.executable, "-m", "gateway", "serve"]
    for flag, value in stack.serve_options(port, redis.url).items():
        if flag in flags:
            cmd += [flag, value]
        else:
            env["GATEWAY_" + flag.removeprefix("--").replace("-", "_").upper()] = value
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    valgrind += [f"--callgrind-out-file={out}/callgrind.out.%p"]
    child = procs.start("gateway", pinned([*valgrind, *cmd], 1), env=env, cwd=tree)
    base = f"http://127.0.0.1:{port}"
    wait_http(child, base + "/readyz", timeout_s=_START_TIMEOUT_S)  # slow under valgrind
    while stack.http_get(base + "/readyz")[0] != 200 and child.alive():
        time.sleep(0.5)
    gateway = stack.Target("gateway", "gateway under callgrind", base + stack.CHAT_PATH, child)
    stack.register_worker(gateway, direct.url)
    openai = stack.register_openai_worker(gateway, stack.openai_base(direct))
    stack.check_gateway(gateway)
    stack.check_openai(openai)
    routes = [Route("seed", gateway.url, gateway.body), Route("openai", openai.url, openai.body)]
    routes = [r for r in routes if r.name in args.routes.split(",")]
    pid = gateway.child.pid
    print(f"callgrind: {tree} (gateway from {gateway_file}), pid {pid}", flush=True)
    for route in routes:
        drive(route, args.warmup, args.connections)
    control(pid, "-i", "on")
    for route in routes:  # a few instrumented requests first: callgrind's own caches fill
        drive(route, 50, args.connections)
    control(pid, "-z")
    counts: dict[str, list[float]] = {route.name: [] for route in routes}
    dump_index = 0
    for repeat in range(args.repeats):
        for route in routes:
            started = time.monotonic()
            drive(route, args.requests, args.connections)
            control(pid, "-d", f"{route.name}-{repeat}")
            dump_index += 1
            per_request = instructions(out / f"callgrind.out.{pid}.{dump_index}") / args.requests
            counts[route.name].append(per_request)
            took_s = time.monotonic() - started
            print(f"  {route.name:7} repeat {repeat}: {per_request / 1000:8.1f}k ({took_s:.0f}s)")
    for name, values in counts.items():
        spread = (max(values) - min(values)) / statistics.median(values) * 100
        shown = " ".join(f"{v / 1000:.1f}k" for v in values)
        median = statistics.median(values) / 1000
        print(f"{name:7} median {median:.1f}k instructions/request, spread {spread:.2f}% ({shown})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=str(stack.REPO), help="checkout to serve (default: this)")
    parser.add_argument("--requests", type=int, default=600, help="per measured window")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1000, help="uninstrumented requests")
    parser.add_argument("--routes", default="seed,openai")
    parser.add_argument("--out", default="bench/results/callgrind", help="where dumps go")
    args = parser.parse_args(argv)
    return run_session("bench.callgrind", lambda procs, redis: measure(args, procs, redis))


if __name__ == "__main__":
    sys.exit(main())
