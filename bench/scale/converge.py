"""How soon a worker registered on gateway A is listed by gateway B on the same registry.

B learns of a write only through Redis (the change event on the registry channel), so the
delay measured here is A's write -> Redis publish -> B's follower -> B's view. Each delay is
taken when B's listing that first shows the worker is received, so it includes the time of
that one listing (reported alongside).
"""

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.load import percentile
from bench.scale import client
from bench.scale.specs import encoded, model_of, spec


@dataclass(slots=True)
class Sequential:
    """Delays from A's 200 to visible on B, one registration at a time."""

    delays_ms: list[float] = field(default_factory=list)
    listing_ms: list[float] = field(default_factory=list)
    stalls: list[dict[str, Any]] = field(default_factory=list)  # versions when B lagged 1 s
    misses: int = 0
    failures: int = 0
    first_failure: str = ""

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.delays_ms)
        return {
            "registrations": len(ordered) + self.misses + self.failures,
            "seen": len(ordered),
            "not_seen_in_time": self.misses,
            "failures": self.failures,
            "first_failure": self.first_failure,
            "p50_ms": round(percentile(ordered, 0.5), 2),
            "p99_ms": round(percentile(ordered, 0.99), 2),
            "max_ms": round(ordered[-1], 2) if ordered else 0.0,
            "delays_ms_in_order": [round(d, 1) for d in self.delays_ms],
            "stalls": self.stalls,
            "listing_on_b_p50_ms": round(statistics.median(self.listing_ms), 2)
            if self.listing_ms
            else 0.0,
        }


async def sequential(
    a_base: str,
    b_base: str,
    upstream_base: str,
    count: int,
    models: int,
    *,
    wait_s: float = 5.0,
) -> Sequential:
    """Register `count` workers on A one by one; after each, poll B until it lists it."""
    result = Sequential()
    async with client.session(2) as http:
        for index in range(count):
            model = model_of(index, models)
            body = spec(upstream_base, index, model, path="c")
            url = str(body["req_url_template"])
            status, raw = await client.register(http, a_base, encoded([body])[0])
            answered = time.perf_counter()
            if status != 200:
                result.failures += 1
                result.first_failure = result.first_failure or f"{status} {raw[:200]!r}"
                continue
            seen = await _poll_until_listed(
                http, (a_base, b_base), model, url, answered + wait_s, result
            )
            if seen is None:
                result.misses += 1
            else:
                result.delays_ms.append((seen - answered) * 1000.0)
    return result


async def _poll_until_listed(
    http: aiohttp.ClientSession,
    bases: tuple[str, str],
    model: str,
    url: str,
    deadline: float,
    result: Sequential,
) -> float | None:
    a_base, b_base = bases
    stall_at = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        if stall_at and time.perf_counter() > stall_at:
            stall_at = 0.0  # once per registration: what each side's view says
            result.stalls.append(
                {
                    "registration": len(result.delays_ms) + result.misses + result.failures,
                    "a_readyz": await _readyz(http, a_base),
                    "b_readyz": await _readyz(http, b_base),
                }
            )
        asked = time.perf_counter()
        workers = await client.listed(http, b_base, model)
        received = time.perf_counter()
        result.listing_ms.append((received - asked) * 1000.0)
        if any(w["req_url_template"] == url for w in workers):
            return received
    return None


async def _readyz(http: aiohttp.ClientSession, base: str) -> Any:
    async with http.get(base + "/readyz") as response:
        return await response.json()


async def burst(
    a_base: str,
    b_base: str,
    upstream_base: str,
    count: int,
    connections: int,
    *,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Register `count` workers on A all at once; time until B lists every one A accepted.

    They are sent over `connections` connections and all belong to one model (`burst-N`, N
    the connections), so one filtered listing on B tells when all have arrived; that model's
    pool is re-sorted on every put (gateway/router.py `_rebuild`).
    """
    model = f"burst-{connections}"
    path = f"b{connections}"
    bodies = encoded([spec(upstream_base, i, model, path=path) for i in range(count)])
    registering = asyncio.create_task(client.register_all(a_base, bodies, connections))
    # The task starts sending on the next loop turn; take the clock just before yielding to it.
    started = time.perf_counter()
    visible_s: float | None = None
    polls = 0
    async with client.session(1) as http:
        while time.perf_counter() < started + timeout_s:
            polls += 1
            listed = len(await client.listed(http, b_base, model))
            # A refused registration never arrives: then wait for every accepted one.
            accepted = len(registering.result().latencies_ms) if registering.done() else count
            if listed >= accepted:
                visible_s = time.perf_counter() - started
                break
            await asyncio.sleep(0.005)
    registered = await asyncio.wait_for(registering, timeout_s)
    return {
        "registrations": count,
        "connections": connections,
        "accepted_by_a": len(registered.latencies_ms),
        "all_answered_by_a_s": round(registered.finished - started, 3),
        "visible_on_b_s": round(visible_s, 3) if visible_s is not None else None,
        "polls_of_b": polls,
        "a_latency": registered.summary(),
    }
