"""Start gateway processes on a chosen registry prefix and time how long they take to serve it."""

import json
import time
from dataclasses import dataclass

from bench.procs import BenchError, Child, Processes, free_port, pinned
from bench.stack import CHAT_PATH, Target, child_env, gateway_command, http_get

_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Gateway:
    """A started gateway process and where it listens."""

    name: str
    prefix: str
    base: str
    child: Child

    def target(self, what: str) -> Target:
        return Target(self.name, what, self.base + CHAT_PATH, self.child)


@dataclass(frozen=True, slots=True)
class StartUp:
    """How long a fresh gateway took to serve its whole registry, and its memory then."""

    ready_s: float  # from spawn to the first 200 of GET /readyz
    listed_s: float  # from spawn to a GET /api/server/workers holding every worker
    listing_s: float  # how long that last listing took to answer
    listing_bytes: int
    workers: int
    rss_ready_bytes: int  # right after /readyz said 200
    rss_listed_bytes: int  # after the listing

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ready_s": round(self.ready_s, 3),
            "listed_s": round(self.listed_s, 3),
            "listing_s": round(self.listing_s, 3),
            "listing_bytes": self.listing_bytes,
            "workers": self.workers,
            "rss_ready_mib": round(self.rss_ready_bytes / 2**20, 2),
            "rss_listed_mib": round(self.rss_listed_bytes / 2**20, 2),
        }


def start(
    procs: Processes, name: str, redis_url: str, prefix: str, cpu: int | None
) -> tuple[Gateway, float]:
    """Spawn a gateway on registry `prefix`; return it and its spawn time (perf_counter)."""
    port = free_port()
    env = child_env()
    env["GATEWAY_KEY_PREFIX"] = prefix
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    spawned = time.perf_counter()
    child = procs.start(name, pinned(gateway_command(port, redis_url), cpu), env=env)
    return Gateway(name, prefix, f"http://127.0.0.1:{port}", child), spawned


def start_timed(
    procs: Processes,
    name: str,
    redis_url: str,
    prefix: str,
    cpu: int | None,
    *,
    expect_workers: int,
    timeout_s: float = 120.0,
) -> tuple[Gateway, StartUp]:
    """Start a gateway and time it until it is ready and lists `expect_workers` workers."""
    gateway, spawned = start(procs, name, redis_url, prefix, cpu)
    deadline = spawned + timeout_s
    _wait_status(gateway, "/readyz", 200, deadline)
    ready_s = time.perf_counter() - spawned
    rss_ready = gateway.child.rss_bytes()
    while True:
        asked = time.perf_counter()
        status, raw = http_get(gateway.base + "/api/server/workers", timeout_s=timeout_s)
        answered = time.perf_counter()
        count = len(json.loads(raw)["data"]) if status == 200 else -1
        if count >= expect_workers:
            break
        if answered > deadline:
            raise BenchError(
                f"{name} lists {count} of {expect_workers} workers after {timeout_s:g}s"
            )
        time.sleep(_POLL_S)
    return gateway, StartUp(
        ready_s=ready_s,
        listed_s=answered - spawned,
        listing_s=answered - asked,
        listing_bytes=len(raw),
        workers=count,
        rss_ready_bytes=rss_ready,
        rss_listed_bytes=gateway.child.rss_bytes(),
    )


def wait_ready(gateway: Gateway, timeout_s: float = 120.0) -> None:
    """Wait until the gateway's /readyz answers 200."""
    _wait_status(gateway, "/readyz", 200, time.perf_counter() + timeout_s)


def _wait_status(gateway: Gateway, path: str, want: int, deadline: float) -> None:
    status, raw = 0, b"no answer"
    while time.perf_counter() < deadline:
        if not gateway.child.alive():
            raise BenchError(
                f"{gateway.name} exited with code {gateway.child.popen.returncode}:\n"
                f"{gateway.child.log_tail()}"
            )
        try:
            status, raw = http_get(gateway.base + path, timeout_s=5.0)
        except BenchError as exc:  # not listening yet
            status, raw = 0, str(exc).encode()
        if status == want:
            return
        time.sleep(_POLL_S)
    raise BenchError(
        f"{gateway.name}: {path} did not answer {want} in time ({status} {raw[:200]!r}):\n"
        f"{gateway.child.log_tail()}"
    )
