"""HTTP from the benchmark process: register many workers at a concurrency, list workers.

Every request has its own timeout and every loop a bounded number of steps, so a gateway that
stops answering fails the phase instead of holding the run.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.load import percentile

_JSON = {"Content-Type": "application/json"}
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30.0)


@dataclass(slots=True)
class Registered:
    """The outcome of registering a batch of workers."""

    started: float  # time.perf_counter() when the first request was sent
    finished: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""

    @property
    def total_s(self) -> float:
        return self.finished - self.started

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        count = len(ordered)
        return {
            "registered": count,
            "failures": self.failures,
            "first_failure": self.first_failure,
            "total_s": round(self.total_s, 3),
            "per_s": round(count / self.total_s, 1) if self.total_s > 0 else 0.0,
            "p50_ms": round(percentile(ordered, 0.5), 2),
            "p99_ms": round(percentile(ordered, 0.99), 2),
        }


def session(connections: int) -> aiohttp.ClientSession:
    """Return a keep-alive session with at most `connections` connections."""
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=_REQUEST_TIMEOUT)


async def register(http: aiohttp.ClientSession, base: str, body: bytes) -> tuple[int, bytes]:
    """POST one register body; return the status and the answer."""
    async with http.post(base + "/api/server/register", data=body, headers=_JSON) as response:
        return response.status, await response.read()


async def register_all(base: str, bodies: list[bytes], concurrency: int) -> Registered:
    """Register every body with `concurrency` clients, each sending one after another."""
    async with session(concurrency) as http:
        result = Registered(started=time.perf_counter())
        pending = iter(bodies)

        async def client() -> None:
            for body in pending:  # shared iterator: each body is taken by one client
                sent = time.perf_counter()
                try:
                    status, raw = await register(http, base, body)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, raw = 0, repr(exc).encode()
                if status == 200:
                    result.latencies_ms.append((time.perf_counter() - sent) * 1000.0)
                else:
                    result.failures += 1
                    result.first_failure = result.first_failure or f"{status} {raw[:200]!r}"

        await asyncio.gather(*(client() for _ in range(min(concurrency, len(bodies)))))
        result.finished = time.perf_counter()
        return result


async def listed(http: aiohttp.ClientSession, base: str, model: str | None = None) -> list[Any]:
    """Return `GET /api/server/workers` (of one model when given); raise on an error status."""
    params = {"model_name": model} if model is not None else None
    async with http.get(base + "/api/server/workers", params=params) as response:
        if response.status != 200:
            raise aiohttp.ClientResponseError(
                response.request_info, (), status=response.status, message="listing failed"
            )
        answer = await response.json()
    data: list[Any] = answer["data"]
    return data
