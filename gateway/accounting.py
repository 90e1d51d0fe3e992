"""Usage accounting: the one hook every answer goes through, and the buffer behind it.

`Accountant.account(trace, model, worker, usage, ...)` is called once per answer with what the
worker reported (or None, then it estimates: gateway/metering.py). It counts the tokens in the
Prometheus metrics, prices them (the price table: config file, then the admin API), notes them
on the trace (the access log, the charge of a metered key at the end of the request, the
request's span) and adds them to this process's buffer. Nothing here waits on Redis. A route
passes its request's trace (`request[TRACE]`); work that goes on after its request has been
answered (a polled Assistants run, gateway/runs.py) passes a trace of its own that carries the
request's key, and charges a metered key itself when it ends.

The buffer sums answers by (minute, key, model, worker, estimated) and is written by one
background task every `usage_flush_interval_ms`, or as soon as `usage_flush_records` answers
are waiting, in one Lua step (registry/usage.py). A crash loses what was buffered: at most
one interval or that many answers. While Redis is unreachable the sums are kept (and the last
batch retried under its own id, so it is never counted twice) up to `usage_max_groups`
distinct sums; past that new answers are dropped and counted in
`gateway_usage_dropped_total`.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.calls import Call
from gateway.metering import Counts, prompt_tokens, text_tokens
from gateway.metrics import Metrics
from gateway.observe import Trace
from gateway.tracing import note_usage
from gateway.worker import Worker
from registry import (
    Batch,
    Group,
    Price,
    PriceStore,
    Retention,
    StoreUnavailable,
    Tally,
    UsageStore,
)
from templates.conversation import Usage

if TYPE_CHECKING:
    from gateway.settings import Settings

log = logging.getLogger(__name__)

_PRICE_RELOAD_S = 5.0  # how soon a price set through another process's admin API is used here
_WARN_EVERY_S = 10.0
_LAST_FLUSH_S = 2.0  # at shutdown, how long the last flush may take

# (minute start, key id, model, worker label, estimated) -> [answers, prompt, completion, cached]
_Sums = dict[tuple[int, str, str, str, bool], list[int]]


class PriceBook:
    """The price table as this process uses it: the config file's, under the admin API's."""

    def __init__(self, configured: Mapping[str, Price], store: PriceStore | None) -> None:
        self.configured = dict(configured)
        self.stored: dict[str, Price] = {}
        self._store = store

    def price(self, model: str) -> Price | None:
        found = self.stored.get(model)
        return found if found is not None else self.configured.get(model)

    async def reload(self) -> None:
        """Read the admin API's prices from Redis (raises StoreUnavailable)."""
        if self._store is not None:
            self.stored = await self._store.all()

    def listing(self) -> list[dict[str, Any]]:
        """Every price in use, and where it comes from."""
        rows = []
        for model in sorted(set(self.configured) | set(self.stored)):
            source = "admin" if model in self.stored else "config"
            price = self.price(model)
            assert price is not None
            rows.append({"model": model, **price.model_dump(), "source": source})
        return rows


class Accountant:
    """This process's usage buffer and the task that writes it to Redis."""

    def __init__(
        self,
        store: UsageStore | None,
        prices: PriceBook,
        metrics: Metrics,
        *,
        flush_interval_s: float,
        flush_records: int,
        max_groups: int,
    ) -> None:
        self._store = store  # None: usage is counted in metrics only (usage_accounting off)
        self.prices = prices
        self.metrics = metrics
        self._interval_s = flush_interval_s
        self._flush_records = flush_records
        self._max_groups = max_groups
        self._sums: _Sums = {}
        self._costs: dict[tuple[int, str, str, str, bool], float] = {}
        self._spend: dict[str, list[Any]] = {}  # key id -> [tokens, cost] (keys not metered)
        # Token counters are given the sums at each flush and scrape, not each answer.
        metrics.before_scrape(self.count_tokens)
        self._waiting = 0  # answers since the last flush began
        self._retry: tuple[str, Batch] | None = None  # a batch whose write did not answer
        self._wake = asyncio.Event()
        self._warned_at = -_WARN_EVERY_S
        self._prices_at = 0.0

    def record(
        self,
        key: str,
        model: str,
        worker: str,
        tokens: tuple[int, int, int],
        estimated: bool,
        cost: float,
        *,
        charge_spend: bool,
    ) -> None:
        """Add one answer's (prompt, completion, cached) tokens to the buffer (and, with
        `charge_spend`, to its key's spend)."""
        group = (int(time.time()) // 60 * 60, key, model, worker, estimated)
        sums = self._sums.get(group)
        if sums is None:
            if len(self._sums) >= self._max_groups:
                self.metrics.usage_dropped(1)
                return
            # answers, prompt, completion, cached; then what the counters were given of them
            sums = self._sums[group] = [0, 0, 0, 0, 0, 0, 0]
        prompt, completion, cached = tokens
        sums[0] += 1
        sums[1] += prompt
        sums[2] += completion
        sums[3] += cached
        if cost:
            self._costs[group] = self._costs.get(group, 0.0) + cost
        if charge_spend and key:
            spend = self._spend.get(key)
            if spend is None:
                spend = self._spend[key] = [0, 0.0]
            spend[0] += prompt + completion
            spend[1] += cost
        self._waiting += 1
        if self._waiting >= self._flush_records:
            self._wake.set()

    def account(
        self,
        trace: Trace,
        model: str,
        worker: Worker,
        usage: Usage | Counts | None,
        *,
        call: Call | None = None,
        completion: str | int = "",
        generation_s: float | None = None,
    ) -> None:
        """Account the final usage of one answer to `trace`: the request's, or, for work that
        goes on after its request has ended (a polled Assistants run), one of its own that
        carries the request's key. Never waits.

        `model` is the model that answered (an alias's choice or a fallback, not the name
        asked); `usage` is what the worker reported (a Usage, or its `Counts`: a passed-through
        answer's, read without making a Usage), or None when it reported nothing: then
        the prompt is estimated from `call` (the client's body, or its decoded request) and
        the completion from `completion`, the answer's text (or a token count the caller
        estimated itself), and the record is marked estimated. `generation_s` is how long the
        worker took to generate (for tokens per second of a stream); None to leave that out.
        The tokens and cost are added to `trace` too: the access log says them, and a
        metered key is charged them when its request (or run) ends.
        """
        if isinstance(usage, tuple):
            prompt, produced, cached = usage
        elif usage is not None:
            prompt, produced = usage.prompt_tokens, usage.completion_tokens
            cached = usage.cached_tokens
        else:
            prompt = prompt_tokens(call.body, call.request) if call is not None else 0
            produced = completion if isinstance(completion, int) else text_tokens(completion)
            cached = None
        price = self.prices.price(model)
        cost = price.cost(prompt, produced, cached) if price is not None else 0.0
        label = worker.label
        if generation_s and produced:
            self.metrics.observe_tokens_per_second(model, label, produced / generation_s)
        trace.prompt_tokens += prompt
        trace.completion_tokens += produced
        estimated = usage is None
        if estimated:
            trace.estimated = True
        trace.cost += cost
        self.record(
            trace.key_id or "",
            model,
            label,
            (prompt, produced, cached or 0),
            estimated,
            cost,
            charge_spend=not trace.metered,
        )
        if trace.span is not None:
            note_usage(trace.span, Usage(prompt, produced, cached), estimated)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every interval, or when enough answers wait; reload prices now and then."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            now = time.monotonic()
            if now - self._prices_at >= _PRICE_RELOAD_S:
                self._prices_at = now
                try:
                    await self.prices.reload()
                except StoreUnavailable as exc:
                    self.metrics.redis_error("usage")
                    self._warn("prices not reloaded", exc)

    def count_tokens(self) -> None:
        """Give the Prometheus counters the tokens summed since they were last given them."""
        for (_minute, _key, model, worker, estimated), sums in self._sums.items():
            prompt, completion, cached = sums[1] - sums[4], sums[2] - sums[5], sums[3] - sums[6]
            if prompt or completion or cached:
                self.metrics.tokens(model, worker, estimated, prompt, completion, cached)
                sums[4], sums[5], sums[6] = sums[1], sums[2], sums[3]

    async def flush(self) -> bool:
        """Write what is buffered; return False when Redis could not take it (kept)."""
        self.count_tokens()
        if self._store is None:
            self._sums, self._costs, self._spend, self._waiting = {}, {}, {}, 0
            return True
        if self._retry is None:
            if not self._sums and not self._spend:
                return True
            self._retry = (uuid.uuid4().hex, self._take())
        flush_id, batch = self._retry
        try:
            await self._store.write(flush_id, batch)
        except StoreUnavailable as exc:
            self.metrics.redis_error("usage")
            self._warn(f"{len(batch)} usage sums not written yet, kept for a retry", exc)
            return False
        self._retry = None
        return True

    def _take(self) -> Batch:
        sums, costs, spend = self._sums, self._costs, self._spend
        self._sums, self._costs, self._spend, self._waiting = {}, {}, {}, 0
        batch = Batch()
        for group, (n, p, c, x, *_counted) in sums.items():
            minute, key, model, worker, estimated = group
            tally = Tally(n, p, c, x, costs.get(group, 0.0))
            batch.minutes[(minute, Group(key, model, worker, estimated))] = tally
        batch.spend = {key: (tokens, cost, "month") for key, (tokens, cost) in spend.items()}
        return batch

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("usage accounting: %s: %s", what, exc.__cause__ or exc)


ACCOUNTANT = web.AppKey("accountant", Accountant)


async def accounting(app: web.Application) -> AsyncIterator[None]:
    """The cleanup context of the accountant: its flush task, and a last flush at shutdown."""
    from gateway.state import METRICS, REDIS, SETTINGS

    settings = app[SETTINGS]
    redis = app[REDIS]
    usage = app[USAGE] = UsageStore(redis, settings.key_prefix, _retention(settings))
    store = usage if settings.usage_accounting else None
    prices = PriceBook(settings.prices, PriceStore(redis, settings.key_prefix))
    accountant = app[ACCOUNTANT] = Accountant(
        store,
        prices,
        app[METRICS],
        flush_interval_s=settings.usage_flush_interval_ms / 1000,
        flush_records=settings.usage_flush_records,
        max_groups=settings.usage_max_groups,
    )
    with contextlib.suppress(StoreUnavailable):
        await prices.reload()
    stop = asyncio.Event()
    task = asyncio.create_task(accountant.run(stop), name="usage-flush")
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # What the last answers used: written now, or lost with the process (the crash window).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LAST_FLUSH_S):
                await accountant.flush()


def _retention(settings: "Settings") -> Retention:
    return Retention(
        minute_s=int(settings.usage_minute_retention_h * 3600),
        hour_s=int(settings.usage_hour_retention_d * 86400),
        day_s=int(settings.usage_day_retention_d * 86400),
    )


USAGE = web.AppKey("usage", UsageStore)
