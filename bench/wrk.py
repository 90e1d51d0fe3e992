"""Drive a URL with `wrk`: a Lua script sets the POST body and prints exact percentiles."""

import re
import shutil
from pathlib import Path

from bench.load import LoadResult
from bench.procs import BenchError, Processes, pinned

_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-RESULT requests=%d duration_us=%d connect=%d read=%d write=%d status=%d " ..
    "timeout=%d p50_us=%d p99_us=%d mean_us=%d max_us=%d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99)),
    math.floor(latency.mean), math.floor(latency.max)))
end
"""
_RESULT = re.compile(r"^BENCH-RESULT (.*)$", re.MULTILINE)


def available() -> bool:
    """Return True when `wrk` is on PATH."""
    return shutil.which("wrk") is not None


def write_script(path: Path, body: bytes) -> Path:
    """Write the Lua script that POSTs `body` and reports the run."""
    text = body.decode("utf-8")
    if "]==]" in text:
        raise BenchError("the request body cannot contain ']==]' (Lua long-bracket end)")
    path.write_text(_SCRIPT.format(body=text), encoding="utf-8")
    return path


def run_wrk(
    procs: Processes,
    url: str,
    script: Path,
    connections: int,
    duration_s: int,
    *,
    cpu: int | None,
) -> LoadResult:
    """Run wrk with one thread per core it may use and parse the script's result line."""
    threads = 1 if cpu is not None else 2
    cmd = pinned(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        cpu,
    )
    code, output = procs.run("wrk", cmd, timeout_s=duration_s + 30)
    match = _RESULT.search(output)
    if code != 0 or match is None:
        raise BenchError(f"wrk failed (exit {code}):\n{output}")
    values = {key: int(value) for key, value in (p.split("=") for p in match.group(1).split())}
    errors = sum(values[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        connections=connections,
        duration_s=values["duration_us"] / 1e6,
        requests=values["requests"] - values["status"],
        errors=errors,
        p50_ms=values["p50_us"] / 1000.0,
        p99_ms=values["p99_us"] / 1000.0,
        mean_ms=values["mean_us"] / 1000.0,
        max_ms=values["max_us"] / 1000.0,
    )
