"""The three measurements of `python -m bench.streams`: streams, soak, N processes."""

import json
import sys
from dataclasses import dataclass
from typing import Any

from bench import stack
from bench.drivers import Driver
from bench.procs import BenchError, Processes, free_port, pinned, wait_http
from bench.report import Row, Sample, table
from bench.streams import client
from bench.streams.rss import RssSeries, sample_while

STREAM_MODEL = "s"
SSE_MODULE = "bench.streams.sse_upstream"
_MIB = 2**20


@dataclass(frozen=True, slots=True)
class Pins:
    """CPUs for the load side (client, upstreams) and the gateway; None when unpinned."""

    load: int | None
    server: int | None


def start_sse_upstream(
    procs: Processes, chunks: int, interval_ms: float, cpu: int | None
) -> stack.Target:
    """Start the timed SSE upstream and return its chat-completions URL."""
    port = free_port()
    cmd = [sys.executable, "-m", SSE_MODULE, "--port", str(port)]
    cmd += ["--chunks", str(chunks), "--interval-ms", str(interval_ms)]
    child = procs.start("sse-upstream", pinned(cmd, cpu), env=stack.child_env())
    base = f"http://127.0.0.1:{port}"
    wait_http(child, base + "/v1/models")
    return stack.Target("direct", "SSE upstream", base + "/v1/chat/completions", child)


def register_stream_worker(gateway: stack.Target, upstream: stack.Target) -> str:
    """Register the SSE upstream as model "s" (openai preset); return the gateway's URL."""
    base = gateway.url.removesuffix(stack.CHAT_PATH)
    spec = {
        "model_name": STREAM_MODEL,
        "preset": "openai",
        "req_url_template": upstream.url.removesuffix("/chat/completions"),
        "owner": "bench",
    }
    status, raw = stack.http_post(base + "/api/server/register", json.dumps(spec).encode())
    if status != 200:
        raise BenchError(f"registering the stream worker failed: {status} {raw[:300]!r}")
    return base + "/v1/chat/completions"


def measure_streams(
    procs: Processes,
    gateway: stack.Target,
    targets: dict[str, str],
    counts: list[int],
    duration_s: float,
    ramp_s: float,
    pins: Pins,
) -> list[dict[str, Any]]:
    """Run the stream client at each count against each target, sampling the gateway's RSS."""
    rows: list[dict[str, Any]] = []
    for count in counts:
        for name, url in targets.items():
            cpu_before = gateway.child.cpu_s()
            rest_bytes = gateway.child.rss_bytes()
            runner = client.start_subprocess(procs, url, count, duration_s, ramp_s, cpu=pins.load)
            series = sample_while(
                gateway.child,
                runner.alive,
                interval_s=0.1,
                timeout_s=duration_s + 60.0,
            )
            procs.stop(runner, timeout_s=2.0)
            row = client.result(runner)
            row.update(
                target=name,
                gateway_cpu_s=round(gateway.child.cpu_s() - cpu_before, 2),
                gateway_rss_rest_mib=round(rest_bytes / _MIB, 1),
                gateway_rss_peak_mib=round(series.peak_bytes() / _MIB, 1),
            )
            rows.append(row)
            print("  " + stream_line(row), flush=True)
    return rows


def stream_line(row: dict[str, Any]) -> str:
    """Render one stream row as a line of text."""
    ttfc, delay = row["ttfc_ms"], row["chunk_delay_ms"]
    return (
        f"{row['target']:<8}{row['concurrent_streams']:>6}{row['streams_per_s']:>10.1f}"
        f"{row['chunks_per_s']:>10.0f}{ttfc['p50']:>8.2f}{ttfc['p99']:>8.2f}"
        f"{delay['p50']:>8.2f}{delay['p99']:>8.2f}{delay['max']:>8.2f}{row['over_10_ms']:>7}"
        f"{row['errors']:>6}{row['gateway_cpu_s']:>8.1f}{row['gateway_rss_peak_mib']:>8.1f}"
    )


STREAM_HEADER = (
    f"{'path':<8}{'K':>6}{'streams/s':>10}{'chunks/s':>10}{'TTFC50':>8}{'TTFC99':>8}"
    f"{'dly50':>8}{'dly99':>8}{'dlyMax':>8}{'>10ms':>7}{'errs':>6}{'gwCPUs':>8}{'gwRSS':>8}"
)


def soak(
    driver: Driver, gateway: stack.Target, soak_s: int, connections: int, every_s: int
) -> dict[str, Any]:
    """Drive the seed route in `every_s` slices for `soak_s`; sample RSS after each slice."""
    series = RssSeries([(0.0, gateway.child.rss_bytes())])
    requests = errors = 0
    elapsed_s = 0.0
    while elapsed_s < soak_s:
        result = driver.run(gateway, connections, every_s)
        elapsed_s += result.duration_s
        requests += result.requests
        errors += result.errors
        series.points.append((elapsed_s, gateway.child.rss_bytes()))
        print(
            f"  soak {elapsed_s:6.0f}s {result.rps:7.0f} req/s p99 {result.p99_ms:6.1f} ms "
            f"RSS {series.points[-1][1] / _MIB:6.1f} MiB",
            flush=True,
        )
    return {
        "seconds": round(elapsed_s, 1),
        "connections": connections,
        "requests": requests,
        "errors": errors,
        "rps": round(requests / elapsed_s, 1) if elapsed_s else 0.0,
        "rss_mib": [[round(t, 1), round(rss / _MIB, 2)] for t, rss in series.points],
        "slope_mib_per_min": round(series.slope_mib_per_min(), 3),
        "slope_after_first_minute_mib_per_min": round(
            RssSeries([p for p in series.points if p[0] >= 60.0]).slope_mib_per_min(), 3
        ),
    }


def processes_rows(
    driver: Driver,
    gateways: list[stack.Target],
    connections: int,
    duration_s: int,
    warmup_s: int,
    rounds: int,
) -> tuple[list[Row], str]:
    """Measure 1 and N gateway processes, unpinned, interleaved; return rows and the table."""
    rows = [Row(g.name, g.what, connections) for g in gateways]
    for round_index in range(rounds):
        for row, gateway in zip(rows, gateways, strict=True):
            if warmup_s:
                driver.run(gateway, connections, warmup_s)
            before = gateway.child.cpu_s()
            result = driver.run(gateway, connections, duration_s)
            row.samples.append(Sample(result, gateway.child.cpu_s() - before))
            print(
                f"  round {round_index + 1} {row.name:<12}{result.rps:8.0f} req/s "
                f"p99 {result.p99_ms:.1f} ms CPU {row.samples[-1].cpu_pct:.0f}%",
                flush=True,
            )
    return rows, table(rows)
