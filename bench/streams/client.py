"""The streaming client: K keep-alive connections, each opening SSE streams back to back.

For every stream it records the time to the first event; for every event, its delay: the
arrival time (CLOCK_MONOTONIC, taken when the bytes are handed to the protocol) minus the
`"t"` stamp the upstream wrote just before sending it. Raw asyncio protocols with a small
HTTP/1.1 chunked decoder keep the client cheap, so 1,000 streams at 20 chunks/s each do not
saturate it. Run it alone with `python -m bench.streams.client URL --streams K --duration S`:
it prints one JSON object.
"""

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from bench import loop
from bench.load import build_request, percentile
from bench.procs import BenchError, Child, Processes, pinned

BODY = json.dumps(
    {"model": "s", "messages": [{"role": "user", "content": "hello"}], "stream": True},
    separators=(",", ":"),
).encode()
_STAMP = b'"t":'
_STREAM_TIMEOUT_S = 30.0


@dataclass
class Tally:
    """Everything measured over one run, shared by every connection."""

    ttfc_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)
    streams: int = 0
    errors: int = 0
    last_error: str = ""


class _StreamConnection(asyncio.Protocol):
    """One keep-alive connection; `start` sends the request, `done` resolves at stream end."""

    def __init__(self, request: bytes, tally: Tally) -> None:
        self._request = request
        self._tally = tally
        self._transport: asyncio.Transport | None = None
        self._raw = bytearray()
        self._events = bytearray()
        self._in_head = True
        self._sent_ns = 0
        self._first = True
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def start(self) -> asyncio.Future[None]:
        if self._transport is None or not self.is_open:
            raise ConnectionError("connection closed")
        self.done = asyncio.get_running_loop().create_future()
        self._in_head, self._first = True, True
        self._raw.clear()
        self._events.clear()
        self._sent_ns = time.monotonic_ns()
        self._transport.write(self._request)
        return self.done

    def data_received(self, data: bytes) -> None:
        now_ns = time.monotonic_ns()
        self._raw += data
        try:
            if self._in_head and not self._parse_head():
                return
            self._dechunk(now_ns)
        except ValueError as exc:
            self._fail(str(exc))

    def _parse_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._raw[:end])
        del self._raw[: end + 4]
        if not head.startswith(b"HTTP/1.1 200"):
            raise ValueError(head.split(b"\r\n", 1)[0].decode("latin-1"))
        if b"transfer-encoding: chunked" not in head.lower():
            raise ValueError("the answer is not chunked")
        self._in_head = False
        return True

    def _dechunk(self, now_ns: int) -> None:
        raw = self._raw
        while True:
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(raw[:line_end].split(b";", 1)[0], 16)
            if len(raw) < line_end + 2 + size + 2:
                return
            payload = raw[line_end + 2 : line_end + 2 + size]
            del raw[: line_end + 2 + size + 2]
            if size == 0:
                self._finish()
                return
            self._events += payload
            self._take_events(now_ns)

    def _take_events(self, now_ns: int) -> None:
        events = self._events
        while (end := events.find(b"\n\n")) >= 0:
            event = events[:end]
            del events[: end + 2]
            start = event.find(_STAMP)
            if start < 0:
                continue
            start += len(_STAMP)
            stamp_ns = int(event[start : event.index(b",", start)])
            if self._first:
                self._first = False
                self._tally.ttfc_ms.append((now_ns - self._sent_ns) / 1e6)
            self._tally.delay_ms.append((now_ns - stamp_ns) / 1e6)

    def _finish(self) -> None:
        self._tally.streams += 1
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _fail(self, reason: str) -> None:
        self._tally.errors += 1
        self._tally.last_error = reason
        if self._transport is not None:
            self._transport.close()
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(reason))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.done is not None and not self.done.done():
            self._fail(f"connection lost ({exc})")


async def _one_connection(
    host: str, port: int, request: bytes, start_delay_s: float, deadline: float, tally: Tally
) -> None:
    """Open streams back to back until `deadline`, reconnecting after a failure."""
    running = asyncio.get_running_loop()
    conn: _StreamConnection | None = None
    await asyncio.sleep(start_delay_s)
    while time.monotonic() < deadline:
        try:
            if conn is None or not conn.is_open:
                _, conn = await running.create_connection(
                    lambda: _StreamConnection(request, tally), host, port
                )
            await asyncio.wait_for(conn.start(), _STREAM_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            tally.errors += 1
            tally.last_error = repr(exc)
            conn = None
            await asyncio.sleep(0.05)
    if conn is not None:
        conn.close()


async def run_streams(
    url: str, streams: int, duration_s: float, ramp_s: float = 0.0
) -> dict[str, Any]:
    """Keep `streams` streams open against `url` for `duration_s`; return what was measured.

    Connection i starts i * ramp_s / streams late. With `ramp_s` one stream's length the
    streams do not tick in step, as they would all started at once (a burst of K requests,
    then bursts of K chunks, every stream-length).
    """
    host, port, request = build_request(url, BODY)
    tally = Tally()
    started = time.monotonic()
    deadline = started + duration_s
    tasks = [
        asyncio.create_task(
            _one_connection(host, port, request, i * ramp_s / streams, deadline, tally)
        )
        for i in range(streams)
    ]
    _, pending = await asyncio.wait(tasks, timeout=duration_s + _STREAM_TIMEOUT_S + 5.0)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=2.0)
    elapsed_s = time.monotonic() - started
    return _summary(tally, streams, elapsed_s, len(pending))


def _summary(tally: Tally, streams: int, elapsed_s: float, stuck: int) -> dict[str, Any]:
    ttfc, delay = sorted(tally.ttfc_ms), sorted(tally.delay_ms)
    return {
        "concurrent_streams": streams,
        "elapsed_s": round(elapsed_s, 3),
        "streams": tally.streams,
        "chunks": len(delay),
        "errors": tally.errors + stuck,
        "last_error": tally.last_error,
        "streams_per_s": round(tally.streams / elapsed_s, 1),
        "chunks_per_s": round(len(delay) / elapsed_s, 1),
        "ttfc_ms": _quantiles(ttfc),
        "chunk_delay_ms": _quantiles(delay),
        "over_10_ms": sum(1 for value in delay if value > 10.0),
    }


def _quantiles(ordered: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(ordered, 0.50), 3),
        "p99": round(percentile(ordered, 0.99), 3),
        "max": round(ordered[-1], 3) if ordered else 0.0,
    }


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def start_subprocess(
    procs: Processes, url: str, streams: int, duration_s: float, ramp_s: float, *, cpu: int | None
) -> Child:
    """Start this client in its own (optionally pinned) process; read it with `result`."""
    cmd = [sys.executable, "-m", "bench.streams.client", url]
    cmd += ["--streams", str(streams), "--duration", str(duration_s), "--ramp", str(ramp_s)]
    return procs.start(f"stream-client-{streams}", pinned(cmd, cpu))


def result(child: Child) -> dict[str, Any]:
    """Return the JSON the finished client printed, or fail with its output."""
    output = child.log_path.read_text(encoding="utf-8", errors="replace")
    if child.popen.returncode != 0 or not output.strip():
        raise BenchError(f"the stream client failed (exit {child.popen.returncode}):\n{output}")
    document: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description="concurrent SSE streams with chunk delays")
    parser.add_argument("url")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--ramp", type=float, default=0.0, help="s over which to start")
    args = parser.parse_args()
    limit = raise_fd_limit()
    if limit < args.streams + 64:
        sys.exit(f"open-file limit {limit} is too low for {args.streams} streams")
    parts = urlsplit(args.url)
    if parts.scheme != "http":
        sys.exit("only http:// URLs")
    summary = loop.run(run_streams(args.url, args.streams, args.duration, args.ramp))
    summary["fd_limit"] = limit
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
