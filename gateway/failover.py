"""The failover loop: pick workers of a pool, attempt each in turn, report a typed outcome.

An attempt that fails before anything reached the client (connect error, timeout, HTTP 429 or
5xx) moves on to the next worker of the pool, up to `max_tries`, all within the request's
`request_timeout_s`; the error finally raised lists every attempt. Once a stream has begun,
nothing is retried (gateway/stream.py). Failures feed passive health (gateway/worker.py).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from gateway.attempt import (
    AttemptFailed,
    Limits,
    collect,
    read_embeddings,
    read_reply,
    read_whole,
    rename_json,
    send,
)
from gateway.calls import Call, WorkerRequest, prepare
from gateway.errors import (
    InvalidRequest,
    NoHealthyWorker,
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
    WorkerRateLimited,
)
from gateway.http1 import Client, HTTPClientError
from gateway.metrics import Metrics
from gateway.pool import Pool, QueueFull
from gateway.stream import Slot, Stream, WorkerReported
from gateway.worker import Ejection, Worker
from templates import MODEL_NAME, ExtractError, RenderedRequest
from templates.codecs import Embeddings
from templates.conversation import Reply
from templates.errors import CannotTranslate

if TYPE_CHECKING:
    from gateway.affinity import Affinity

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete (non-streamed) answer."""

    worker: Worker
    tries: int
    upstream_s: float
    reply: Reply | None = None  # a translated chat or completion
    embeddings: Embeddings | None = None  # translated embeddings
    raw: bytes | None = None  # the worker's own JSON body (passthrough calls)


Attempt = Callable[[Slot, WorkerRequest, float, float], Awaitable[T]]


class Failover:
    """Answers calls from the workers of a pool over one keep-alive client (gateway/http1/)."""

    def __init__(
        self,
        client: Client,
        *,
        limits: Limits,
        ejection: Ejection,
        max_tries: int,
        request_timeout_s: float,
        queue_timeout_s: float = 5.0,
        panic: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._limits = limits
        self.ejection = ejection
        self._max_tries = max_tries
        self._request_timeout_s = request_timeout_s
        self._queue_timeout_s = queue_timeout_s
        self._panic = panic
        self.metrics = metrics

    async def complete(
        self,
        pool: Pool,
        call: Call,
        *,
        affinity: "Affinity | None" = None,
        queue: bool = True,
    ) -> Answer:
        """Get a whole answer for `call` from a worker of `pool`, failing over if needed.

        `affinity` is what `prefix` balancing places the request by; with `queue` false a
        request that finds every worker busy is refused (Overloaded) instead of waiting.
        """
        client, limits = self._client, self._limits

        async def attempt(slot: Slot, req: WorkerRequest, timeout_s: float, until: float) -> Answer:
            worker = slot.worker
            started = time.perf_counter()
            if req.streamed:  # a stream joined for this client
                deadline = min(until, _now() + limits.stream_timeout_s)
                response = await send(client, worker, req, timeout_s=timeout_s, deadline=deadline)
                reply = await collect(worker, req, response, limits)
                return Answer(worker, 0, time.perf_counter() - started, reply=reply)
            deadline = min(until, _now() + timeout_s)
            response = await send(client, worker, req, timeout_s=timeout_s, deadline=deadline)
            raw = await read_whole(response, limits, timeout_s)
            elapsed = time.perf_counter() - started
            if req.passthrough:
                return Answer(worker, 0, elapsed, raw=rename_json(raw, worker, call))
            if call.op == "embedding":
                found = await read_embeddings(worker, req, raw, limits)
                return Answer(worker, 0, elapsed, embeddings=found)
            return Answer(worker, 0, elapsed, reply=await read_reply(worker, req, raw, limits))

        answer, tries = await self._run(pool, call, attempt, False, affinity, queue)
        return Answer(
            answer.worker, tries, answer.upstream_s, answer.reply, answer.embeddings, answer.raw
        )

    async def open_stream(
        self,
        pool: Pool,
        call: Call,
        *,
        affinity: "Affinity | None" = None,
        queue: bool = True,
        translate: bool = False,
        accept: Callable[[Worker], bool] | None = None,
    ) -> Stream:
        """Start a streamed answer, failing over until a worker accepts the request.

        A worker that answers whole is read here, before the client's stream begins, so its
        failures are still failed over and told as an HTTP status. With `translate`, a
        worker's own stream (passthrough) is decoded into events too (a resumable stream's
        text must be known); `accept` narrows the workers tried (Pool.candidates).
        """
        client, limits, ejection = self._client, self._limits, self.ejection

        async def attempt(slot: Slot, req: WorkerRequest, timeout_s: float, until: float) -> Stream:
            worker = slot.worker
            if req.streamed:
                deadline = min(until, _now() + limits.stream_timeout_s)
                response = await send(client, worker, req, timeout_s=timeout_s, deadline=deadline)
                stream = Stream(
                    slot,
                    req,
                    response,
                    ejection=ejection,
                    max_line_bytes=limits.max_stream_line_bytes,
                    tries=0,
                    translate=translate,
                )
                await _begin(stream, worker, limits)
                return stream
            deadline = min(until, _now() + timeout_s)
            response = await send(client, worker, req, timeout_s=timeout_s, deadline=deadline)
            raw = await read_whole(response, limits, timeout_s)
            reply = await read_reply(worker, req, raw, limits)
            return Stream(
                slot,
                req,
                None,
                reply=reply,
                ejection=ejection,
                max_line_bytes=limits.max_stream_line_bytes,
                tries=0,
            )

        stream, tries = await self._run(pool, call, attempt, True, affinity, queue, accept)
        stream.tries = tries
        return stream

    async def count_tokens(self, pool: Pool, body: dict[str, Any], counters: list[Worker]) -> Any:
        """Ask an Anthropic-compatible worker of `pool` to count `body`'s input tokens."""
        failures: list[str] = []
        for worker in counters[: self._max_tries]:
            op = worker.plan.operations["chat"]
            sent = {**body, "model": worker.record.served_model}
            head = op.plan.head({MODEL_NAME: worker.record.served_model}, orjson.dumps(sent))
            http = RenderedRequest(head.method, head.url + "/count_tokens", head.headers, head.body)
            req = WorkerRequest(op, http, True, False, None)
            timeout_s = worker.record.timeout_s
            try:
                response = await send(
                    self._client, worker, req, timeout_s=timeout_s, deadline=_now() + timeout_s
                )
                raw = await read_whole(response, self._limits, timeout_s)
            except AttemptFailed as exc:
                failures.append(f"{worker.label}: {worker.redact(exc.reason)}")
                continue
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                failures.append(f"{worker.label}: its count is not JSON")
        raise UpstreamError(f"model {pool.model!r}: counting tokens failed: " + "; ".join(failures))

    async def _run(
        self,
        pool: Pool,
        call: Call,
        attempt: Attempt[T],
        hold: bool,
        affinity: "Affinity | None",
        queue: bool,
        accept: Callable[[Worker], bool] | None = None,
    ) -> tuple[T, int]:
        until = _now() + self._request_timeout_s
        candidates = await self._candidates(pool, call, until, affinity, queue, accept)
        failures: list[str] = []
        limited: list[AttemptFailed] = []  # the tries a worker answered 429
        timed_out = True
        metrics = self.metrics
        for tries, worker in enumerate(candidates, start=1):
            remaining_s = until - _now()
            if remaining_s <= 0:
                failures.append(f"the request's {self._request_timeout_s:g}s deadline passed")
                break
            if tries > 1 and metrics is not None:
                metrics.retry(pool.model)
            timeout_s = min(worker.record.timeout_s, remaining_s)
            traced = call.span.attempt(pool.model, worker, tries) if call.span is not None else None
            if traced is not None:
                call.trace_headers = traced.headers  # the worker's parent is this attempt
            try:
                req = prepare(worker, call)
            except CannotTranslate as exc:
                if traced is not None:
                    traced.failed(str(exc), 400)
                raise InvalidRequest(str(exc)) from None
            slot = Slot(pool, worker, metrics)
            try:
                result = await attempt(slot, req, timeout_s, until)
            except AttemptFailed as exc:
                slot.release()
                reason = worker.redact(exc.reason)
                self._failed(pool, worker, exc, reason, slot.sent_at)
                if traced is not None:
                    traced.failed(reason, exc.status or ("timeout" if exc.timed_out else "error"))
                failures.append(f"{worker.label}: {reason}")
                timed_out = timed_out and exc.timed_out
                if exc.status == 429:
                    limited.append(exc)
                if not exc.retryable:
                    break
                continue
            except BaseException as exc:
                slot.release()
                if traced is not None:
                    traced.failed(str(exc)[:200] or type(exc).__name__, type(exc).__name__)
                raise
            ended = time.perf_counter()
            if traced is not None:
                call.span.succeeded(traced)
            if metrics is not None:
                metrics.observe_upstream(pool.model, worker.label, 200, ended - slot.sent_at)
            if not hold:  # a Stream keeps the worker's slot until it is closed
                slot.release()
                worker.stats.succeeded(slot.sent_at, ended)
            return result, tries
        summary = "; ".join(failures)
        noun = "try" if len(failures) == 1 else f"all {len(failures)} tries"
        message = f"model {pool.model!r}: {noun} failed: {summary}"
        if timed_out:
            raise UpstreamTimeout(message)
        if limited and len(limited) == len(failures):  # every worker tried is over its own limit
            waits = [int(exc.retry_after) for exc in limited if exc.retry_after]
            retry_after = str(min(waits)) if waits else "1"
            raise WorkerRateLimited(message, headers={"Retry-After": retry_after})
        raise UpstreamError(message)

    def _failed(
        self, pool: Pool, worker: Worker, exc: AttemptFailed, reason: str, started: float
    ) -> None:
        metrics = self.metrics
        ended = time.perf_counter()
        if metrics is not None:
            outcome = exc.status or ("timeout" if exc.timed_out else "error")
            metrics.observe_upstream(pool.model, worker.label, outcome, ended - started)
        stats = worker.stats
        if stats.failed(reason, self.ejection if exc.ejectable else None, started, ended):
            log.warning(
                "ejected worker %s of %s after %d failures in a row: %s",
                worker.label,
                pool.model,
                stats.consecutive_failures,
                reason,
            )
            if metrics is not None:
                metrics.ejected(pool.model, worker.label)

    async def _candidates(
        self,
        pool: Pool,
        call: Call,
        until: float,
        affinity: "Affinity | None",
        queue: bool,
        accept: Callable[[Worker], bool] | None,
    ) -> list[Worker]:
        op = call.op
        while True:
            candidates = pool.candidates(
                op, self._max_tries, panic=self._panic, affinity=affinity, accept=accept
            )
            if candidates:
                return candidates
            if op != "chat" and not pool.able(op):
                raise InvalidRequest(
                    f"model {pool.model!r} has no worker that serves {op}s; register an "
                    'openai or ollama preset worker for it ("preset": "openai")'
                )
            if not pool.all_busy(op):
                raise NoHealthyWorker(
                    f"model {pool.model!r} has no healthy worker right now (all are down or "
                    "ejected after failures); retry after the Retry-After delay",
                    headers={"Retry-After": str(pool.retry_after_s())},
                )
            wait_s = min(self._queue_timeout_s, until - _now()) if queue else 0.0
            try:
                if wait_s <= 0:
                    raise TimeoutError
                await pool.wait_for_room(wait_s)
            except (TimeoutError, QueueFull):
                raise Overloaded(
                    f"every worker of model {pool.model!r} is at its max_concurrency and the "
                    "wait for a free one ran out; retry shortly",
                    headers={"Retry-After": "1"},
                ) from None


async def _begin(stream: Stream, worker: Worker, limits: Limits) -> None:
    """Read a stream to its first content while it can still fail over (Stream.begin)."""
    try:
        await stream.begin()
    except BaseException as exc:
        await stream.aclose()
        if isinstance(exc, WorkerReported):
            raise AttemptFailed(exc.describe(worker.redact), retryable=True) from exc
        if isinstance(exc, ExtractError):
            raise AttemptFailed(exc.describe(worker.redact), retryable=False) from exc
        if isinstance(exc, TimeoutError):
            raise AttemptFailed(
                f"the stream stalled before its first piece ({worker.record.timeout_s:g}s)",
                retryable=True,
                timed_out=True,
            ) from exc
        if isinstance(exc, HTTPClientError):
            reason = worker.redact.quote(str(exc) or type(exc).__name__)
            raise AttemptFailed(
                f"the worker broke off its stream ({reason})", retryable=True
            ) from exc
        raise


def _now() -> float:
    # The worker client's deadlines are on the loop's clock.
    return asyncio.get_running_loop().time()
