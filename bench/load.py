"""The Python load generator, used when `wrk` is not installed.

N keep-alive connections on raw asyncio streams each send the same POST back to back for a
fixed time and record every request's latency. Only what keep-alive needs is parsed (status
line, Content-Length), so one core drives a Python server to its limit; a server as fast as
nginx is faster than this client, which the table then shows. Run it alone with
`python -m bench.load URL --connections 32 --duration 5 --body '{...}'`: it prints one JSON
object with the result.
"""

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from bench import loop
from bench.procs import BenchError, Processes, pinned

_MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured; latencies in milliseconds."""

    connections: int
    duration_s: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def percentile(sorted_ms: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def summarise(
    latencies_ms: list[float], errors: int, connections: int, duration_s: float
) -> LoadResult:
    """Turn per-request latencies into a `LoadResult`."""
    ordered = sorted(latencies_ms)
    return LoadResult(
        connections=connections,
        duration_s=duration_s,
        requests=len(ordered),
        errors=errors,
        p50_ms=percentile(ordered, 0.50),
        p99_ms=percentile(ordered, 0.99),
        mean_ms=sum(ordered) / len(ordered) if ordered else 0.0,
        max_ms=ordered[-1] if ordered else 0.0,
    )


def build_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    """Return host, port and the raw bytes of a keep-alive JSON POST to `url`."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return host, port, head.encode("ascii") + body


async def _one_connection(
    host: str, port: int, request: bytes, deadline: float, latencies_ms: list[float]
) -> int:
    """Send `request` back to back until `deadline`; return the number of failed requests."""
    errors = 0
    clock = time.perf_counter
    reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD_BYTES)
    try:
        while clock() < deadline:
            started = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = _content_length(head)
            if length < 0:
                raise ConnectionError("response without Content-Length: cannot keep alive")
            await reader.readexactly(length)
            finished = clock()
            if finished > deadline:
                break
            if status >= 400:
                errors += 1
            else:
                latencies_ms.append((finished - started) * 1000.0)
    finally:
        writer.close()
    return errors


def _content_length(head: bytes) -> int:
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        return -1
    start += len(b"\r\ncontent-length:")
    return int(lower[start : lower.find(b"\r\n", start)])


async def run_load(url: str, body: bytes, connections: int, duration_s: float) -> LoadResult:
    """Drive `url` with `connections` keep-alive connections for `duration_s` seconds."""
    host, port, request = build_request(url, body)
    latencies_ms: list[float] = []
    started = time.perf_counter()
    deadline = started + duration_s
    tasks = [
        asyncio.create_task(_one_connection(host, port, request, deadline, latencies_ms))
        for _ in range(connections)
    ]
    errors = 0
    # A server that stops answering must not hold the run: bound it past the deadline.
    done, pending = await asyncio.wait(tasks, timeout=duration_s + 10.0)
    for task in pending:
        task.cancel()
        errors += 1
    for task in done:
        exc = task.exception()
        errors += 1 if exc is not None else task.result()
    if pending:
        await asyncio.wait(pending, timeout=2.0)
    return summarise(latencies_ms, errors, connections, duration_s)


def run_subprocess(
    procs: Processes, url: str, body: bytes, connections: int, duration_s: float, *, cpu: int | None
) -> LoadResult:
    """Run this generator in its own (optionally pinned) process and return its result."""
    cmd = [sys.executable, "-m", "bench.load", url, "--connections", str(connections)]
    cmd += ["--duration", str(duration_s), "--body", body.decode()]
    code, output = procs.run("load", pinned(cmd, cpu), timeout_s=duration_s + 30)
    if code != 0:
        raise BenchError(f"the load generator failed (exit {code}):\n{output}")
    fields = json.loads(output.strip().splitlines()[-1])
    fields.pop("rps", None)
    return LoadResult(**fields)


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP/1.1 keep-alive POST load generator")
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--body", default="{}", help="JSON body of every request")
    args = parser.parse_args()
    result = loop.run(run_load(args.url, args.body.encode(), args.connections, args.duration))
    print(json.dumps(result.as_dict()))


if __name__ == "__main__":
    main()
