"""Workers' own load, read from their /metrics by the probe loop and shared as their health.

Model servers publish how busy they are in the Prometheus text format. What is read:

- vLLM: `vllm:num_requests_running`, `vllm:num_requests_waiting` and the KV cache in use,
  `vllm:gpu_cache_usage_perc` (`vllm:kv_cache_usage_perc` in newer versions), 0 to 1;
- llama.cpp (`--metrics`): `llamacpp:requests_processing`, `llamacpp:requests_deferred`,
  `llamacpp:kv_cache_usage_ratio`;
- SGLang (`--enable-metrics`): `sglang:num_running_reqs`, `sglang:num_queue_reqs`,
  `sglang:token_usage`.

Series of one name (engines, ranks, models) are summed; the KV share is the largest.

A worker's metrics are read at its `metrics_url`, else at `/metrics` of an OpenAI-speaking
worker's host when its model balances by load (`least_load`, `prefix`). Reading is bounded as
any worker answer is: the worker client's head bounds, `probe_timeout_s` for the whole
exchange, `metrics_max_bytes` for the body (after decompression); redirects are never
followed. A URL that fails is left alone for a while (doubling, up to a minute), and the
workers it spoke for lose their report rather than keep a stale one.

Only the holder of the probe lease reads; what it reads reaches every process as the
worker's health (op "health" events), written only when it changed, and only for workers
that are up.
"""

import asyncio
import logging
import math
import time

from gateway.http1 import Client, HTTPClientError
from gateway.router import Router
from gateway.worker import Worker
from registry import Health, Load, RegistryStore, StoreUnavailable

log = logging.getLogger(__name__)

_RUNNING = (
    b"vllm:num_requests_running",
    b"llamacpp:requests_processing",
    b"sglang:num_running_reqs",
)
_WAITING = (b"vllm:num_requests_waiting", b"llamacpp:requests_deferred", b"sglang:num_queue_reqs")
_KV = (
    b"vllm:gpu_cache_usage_perc",
    b"vllm:kv_cache_usage_perc",
    b"llamacpp:kv_cache_usage_ratio",
    b"sglang:token_usage",
)
_KIND = {name: kind for names, kind in ((_RUNNING, 0), (_WAITING, 1), (_KV, 2)) for name in names}
_LOAD_AWARE = frozenset({"least_load", "prefix"})
_MAX_BACKOFF_S = 60.0
_KV_STEP = 0.02  # a smaller change of KV cache use is not worth an event


def parse_load(text: bytes) -> Load | None:
    """Read the load gauges of a Prometheus text page; None when it has none of them."""
    sums = [0.0, 0.0]
    kv: float | None = None
    found = False
    for line in text.split(b"\n"):
        if not line.startswith((b"vllm:", b"llamacpp:", b"sglang:")):
            continue  # comments, blank lines and every other metric
        end = len(line)
        for stop in (line.find(b"{"), line.find(b" ")):
            if 0 <= stop < end:
                end = stop
        kind = _KIND.get(line[:end])
        if kind is None:
            continue
        value = _value(line, end)
        if value is None:
            continue
        found = True
        if kind == 2:
            kv = value if kv is None else max(kv, value)
        else:
            sums[kind] += value
    if not found:
        return None
    return Load(
        running=int(min(sums[0], 1e9)),
        waiting=int(min(sums[1], 1e9)),
        kv_usage=None if kv is None else min(max(kv, 0.0), 1.0),
        at=time.time(),
    )


def _value(line: bytes, start: int) -> float | None:
    """The sample value after the metric name (and its labels) at `start`."""
    rest = line[start:]
    if rest.startswith(b"{"):
        close = _labels_end(rest)
        if close < 0:
            return None
        rest = rest[close + 1 :]
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _labels_end(text: bytes) -> int:
    """The index of the `}` closing a label set (quoted values may hold one)."""
    quoted = escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == 0x5C:  # backslash
            escaped = quoted
        elif char == 0x22:  # double quote
            quoted = not quoted
        elif char == 0x7D and not quoted:  # closing brace
            return index
    return -1


def changed(old: Load | None, new: Load | None) -> bool:
    """Whether `new` says something `old` did not (worth a change event)."""
    if old is None or new is None:
        return old is not new
    if (old.running, old.waiting) != (new.running, new.waiting):
        return True
    if (old.kv_usage is None) != (new.kv_usage is None):
        return True
    return old.kv_usage is not None and abs(old.kv_usage - (new.kv_usage or 0.0)) >= _KV_STEP


class LoadReader:
    """Reads the /metrics of up workers once per probe round; publishes what changed."""

    def __init__(
        self,
        client: Client,
        store: RegistryStore,
        router: Router,
        *,
        timeout_s: float,
        max_bytes: int,
        interval_s: float,
    ) -> None:
        self._client = client
        self._store = store
        self._router = router
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._interval_s = interval_s
        self._failing: dict[str, tuple[int, float]] = {}  # url -> (failures, next try)
        self._limit = asyncio.Semaphore(32)

    def wanted(self) -> dict[str, list[Worker]]:
        """The metrics URLs to read this round, each with the up workers it speaks for."""
        router = self._router
        groups: dict[str, list[Worker]] = {}
        for worker in router.workers():
            url = worker.metrics_url
            if url is None or worker.stats.active != "up":
                continue
            if not worker.metrics_given and (
                router.balancing_of(worker.record.model_name) not in _LOAD_AWARE
            ):
                continue
            groups.setdefault(url, []).append(worker)
        return groups

    async def read_all(self) -> None:
        """Read every wanted URL (at most 32 at once) and publish the changes."""
        groups = self.wanted()
        await asyncio.gather(*(self._read(url, group) for url, group in groups.items()))
        if len(self._failing) > 2 * len(groups) + 16:
            self._failing = {k: v for k, v in self._failing.items() if k in groups}

    async def _read(self, url: str, group: list[Worker]) -> None:
        now = time.monotonic()
        failing = self._failing.get(url)
        if failing is not None and failing[1] > now:
            return
        async with self._limit:
            load, problem = await self.fetch(url)
            if load is None:
                count = failing[0] + 1 if failing is not None else 1
                backoff_s = min(_MAX_BACKOFF_S, self._interval_s * 2**count)
                self._failing[url] = (count, now + backoff_s)
                if count == 1:
                    worker = group[0]
                    reason = worker.redact(problem)
                    log.info("no load from %s (%s); trying again later", worker.label, reason)
            else:
                self._failing.pop(url, None)
            for worker in group:
                if changed(worker.stats.report, load):
                    await self._publish(worker, load)

    async def fetch(self, url: str) -> tuple[Load | None, str]:
        """Read one metrics page; return its load, or None and what went wrong."""
        loop = asyncio.get_running_loop()
        headers = {"Accept": "text/plain", "Accept-Encoding": "identity"}
        try:
            response = await self._client.request(
                "GET", url, headers, None, deadline=loop.time() + self._timeout_s
            )
            try:
                if response.status != 200:
                    return None, f"its metrics URL answered HTTP {response.status}"
                raw = await response.read(self._max_bytes)
            finally:
                response.release()
        except TimeoutError:
            return None, f"no metrics within {self._timeout_s:g}s"
        except HTTPClientError as exc:
            return None, f"could not read metrics ({str(exc)[:200] or type(exc).__name__})"
        load = parse_load(raw)
        return load, "" if load is not None else "the page has no load metrics it knows"

    async def _publish(self, worker: Worker, load: Load | None) -> None:
        stats = worker.stats
        if stats.active != "up":  # went down meanwhile: its down health says enough
            return
        health = Health(state="up", since=stats.active_since or time.time(), reason="", load=load)
        try:
            change = await self._store.set_health(worker.id, health)
        except StoreUnavailable as exc:
            log.warning("could not record the load of %s: %s", worker.label, exc)
            return
        if change is not None:
            self._router.apply_local(change)
