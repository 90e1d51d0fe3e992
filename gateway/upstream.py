"""Calling workers: render the request, send it on the pooled session, read the answer.

This is the one place where aiohttp client errors and timeouts are caught. An attempt that
fails before anything reached the client (connect error, timeout, HTTP 429 or 5xx) moves on to
the next worker of the pool, up to `max_tries`; the error finally raised lists every attempt.
Once a stream has begun, nothing is retried (see gateway/stream.py).

A worker is called one of two ways. When it speaks the client's own protocol (an OpenAI
client and an `openai` worker) the client's body is passed through with only the model name
changed; otherwise the worker's operation template is rendered and its answer extracted.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from gateway.deadlines import Deadlines
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NoHealthyWorker,
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.http1 import Client, ConnectFailed, HTTPClientError, Response
from gateway.metrics import Metrics
from gateway.router import Ejection, Pool, QueueFull, Worker
from gateway.stream import Stream, describe, error_text
from templates import (
    MODEL_NAME,
    STREAM,
    ExtractError,
    Operation,
    OperationName,
    RenderedRequest,
    decoder,
)

log = logging.getLogger(__name__)

Family = Literal["seed", "openai", "ollama"]
T = TypeVar("T")

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# A passthrough request's own fault, told to the client as it is (not the worker's failure).
_CLIENT_STATUS = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class Call:
    """One client request as the upstream layer needs it."""

    family: Family
    op: OperationName
    values: Mapping[str, Any]  # placeholder values for template rendering
    body: Mapping[str, Any] | None  # the client's own JSON, for same-protocol workers
    stream: bool
    request_id: str = ""  # sent to the worker as X-Request-ID


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete (non-streamed) answer."""

    worker: Worker
    tries: int
    upstream_s: float
    text: str = ""  # the extracted text (translated calls)
    value: Any = None  # the extracted JSON value (embeddings)
    raw: bytes | None = None  # the worker's own JSON body (passthrough calls)


class WorkerRejected(GatewayError):
    """A same-protocol worker refused the client's own request; its status is passed on."""

    openai_type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]


class _AttemptFailed(Exception):
    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        timed_out: bool = False,
        ejectable: bool | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.timed_out = timed_out
        self.status = status
        # Counts toward passive ejection: the worker is down, hung or failing (not a 429, not
        # an answer the extract path could not read).
        self.ejectable = retryable if ejectable is None else ejectable


class Upstream:
    """Sends requests to workers over one bounded, keep-alive HTTP client (gateway/http1/)."""

    def __init__(
        self,
        client: Client,
        *,
        max_tries: int,
        max_response_bytes: int,
        request_timeout_s: float,
        ejection: Ejection,
        queue_timeout_s: float = 5.0,
        panic: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._max_tries = max_tries
        self._max_response_bytes = max_response_bytes
        self._request_timeout_s = request_timeout_s
        self.ejection = ejection
        self._queue_timeout_s = queue_timeout_s
        self._panic = panic
        self._metrics = metrics
        self._deadlines = Deadlines()

    def entered(self, pool: Pool, worker: Worker) -> None:
        """A request to `worker` starts."""
        worker.stats.in_flight += 1

    def left(self, pool: Pool, worker: Worker) -> None:
        """A request to `worker` ended: free its slot and wake a request waiting for one."""
        worker.stats.in_flight -= 1
        pool.released()

    def first_piece(self, model: str, worker: Worker, sent_at: float) -> None:
        """The first piece of a streamed answer arrived."""
        if self._metrics is not None:
            self._metrics.observe_ttft(model, worker.label, time.perf_counter() - sent_at)

    async def complete(self, pool: Pool, call: Call) -> Answer:
        """Get a whole answer for `call` from a worker of `pool`, failing over if needed."""

        async def attempt(worker: Worker, timeout_s: float) -> Answer:
            started = time.perf_counter()
            op, passthrough, streamed, request = self._request(worker, call)
            if streamed:  # a stream joined for this client: timeout_s bounds each wait
                response = await self._send(worker, request, True, passthrough, timeout_s)
                try:
                    text = await self._collect(response, op)
                finally:
                    response.release()
                return Answer(worker, 0, time.perf_counter() - started, text=text)
            # One deadline for the whole exchange, swept by a shared timer (gateway/deadlines.py);
            # aiohttp's own total timeout cost about a fifth of the proxy's throughput (bench/).
            task = asyncio.current_task()
            assert task is not None
            deadlines = self._deadlines
            deadlines.arm(task, timeout_s)
            try:
                response = await self._send(worker, request, False, passthrough, timeout_s)
                try:
                    raw = await self._read(response)
                finally:
                    response.release()
            except asyncio.CancelledError:
                if not deadlines.expired(task) or task.cancelling() > 1:
                    raise  # the client went away, or the gateway is stopping (maybe as well)
                raise _AttemptFailed(
                    f"no answer within {timeout_s:g}s", retryable=True, timed_out=True
                ) from None
            finally:
                if deadlines.disarm(task):
                    task.uncancel()  # the deadline's cancel is handled: not a real cancellation
            elapsed = time.perf_counter() - started
            if passthrough:
                return Answer(worker, 0, elapsed, raw=_rename_json(raw, worker, call))
            try:
                if call.op == "embedding":
                    return Answer(worker, 0, elapsed, value=op.extractor.find(orjson.loads(raw)))
                return Answer(worker, 0, elapsed, text=op.extractor.extract(raw))
            except (ExtractError, orjson.JSONDecodeError) as exc:
                raise _AttemptFailed(
                    f"{exc}; fix the worker or its response_extract", retryable=False
                ) from exc

        answer, tries = await self._failover(pool, call, attempt, hold=False)
        return Answer(
            answer.worker, tries, answer.upstream_s, answer.text, answer.value, answer.raw
        )

    async def open_stream(self, pool: Pool, call: Call) -> Stream:
        """Start a streamed answer, failing over until a worker accepts the request."""

        async def attempt(worker: Worker, timeout_s: float) -> Stream:
            op, passthrough, streamed, request = self._request(worker, call)
            # Read-timed even when the worker answers whole: nothing else bounds a stream.
            response = await self._send(worker, request, True, passthrough, timeout_s)
            rename = None
            if passthrough and worker.record.upstream_model and call.body is not None:
                rename = str(call.body.get("model", "")).encode()
            return Stream(pool, worker, response, op, passthrough, streamed, rename, self)

        stream, tries = await self._failover(pool, call, attempt, hold=True)
        stream.tries = tries
        return stream

    async def _failover(
        self,
        pool: Pool,
        call: Call,
        attempt: Callable[[Worker, float], Awaitable[T]],
        *,
        hold: bool,
    ) -> tuple[T, int]:
        deadline = time.monotonic() + self._request_timeout_s
        candidates = await self._candidates(pool, call, deadline)
        failures: list[str] = []
        timed_out = True
        metrics = self._metrics
        for tries, worker in enumerate(candidates, start=1):
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                failures.append(f"the request's {self._request_timeout_s:g}s deadline passed")
                break
            if tries > 1 and metrics is not None:
                metrics.retry(pool.model)
            stats = worker.stats
            timeout_s = worker.record.timeout_s
            if remaining_s < timeout_s:
                timeout_s = round(remaining_s, 1) or 0.1  # few distinct values: cacheable
            self.entered(pool, worker)
            started = time.perf_counter()
            try:
                result = await attempt(worker, timeout_s)
            except _AttemptFailed as exc:
                self.left(pool, worker)
                if metrics is not None:
                    outcome = exc.status or ("timeout" if exc.timed_out else "error")
                    metrics.observe_upstream(
                        pool.model, worker.label, outcome, time.perf_counter() - started
                    )
                if stats.failed(exc.reason, self.ejection if exc.ejectable else None):
                    log.warning(
                        "ejected worker %s of %s after %d failures in a row: %s",
                        worker.label,
                        pool.model,
                        stats.consecutive_failures,
                        exc.reason,
                    )
                    if metrics is not None:
                        metrics.ejected(pool.model, worker.label)
                failures.append(f"{worker.label}: {exc.reason}")
                timed_out = timed_out and exc.timed_out
                if not exc.retryable:
                    break
                continue
            except BaseException:
                self.left(pool, worker)
                raise
            if metrics is not None:
                elapsed = time.perf_counter() - started
                metrics.observe_upstream(pool.model, worker.label, 200, elapsed)
            if not hold:  # a Stream keeps the worker's slot until it is closed
                self.left(pool, worker)
                stats.succeeded()
            return result, tries
        summary = "; ".join(failures)
        noun = "try" if len(failures) == 1 else f"all {len(failures)} tries"
        message = f"model {pool.model!r}: {noun} failed: {summary}"
        if timed_out:
            raise UpstreamTimeout(message)
        raise UpstreamError(message)

    async def _candidates(self, pool: Pool, call: Call, deadline: float) -> list[Worker]:
        if call.op == "embedding":
            return self._embedding_candidates(pool)
        while True:
            candidates = pool.candidates(self._max_tries, panic=self._panic)
            if candidates:
                return candidates
            if not pool.all_busy():
                raise NoHealthyWorker(
                    f"model {pool.model!r} has no healthy worker right now (all are down or "
                    "ejected after failures); retry after the Retry-After delay",
                    headers={"Retry-After": str(pool.retry_after_s())},
                )
            wait_s = min(self._queue_timeout_s, deadline - time.monotonic())
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

    def _embedding_candidates(self, pool: Pool) -> list[Worker]:
        able = [w for w in pool.workers if "embedding" in w.plan.operations]
        if not able:
            raise InvalidRequest(
                f"model {pool.model!r} has no worker that serves embeddings; register an "
                'openai or ollama preset worker for it ("preset": "openai")'
            )
        now = time.monotonic()
        healthy = [w for w in able if w.healthy(now)] or (able if self._panic else [])
        if not healthy:
            raise NoHealthyWorker(
                f"model {pool.model!r} has no healthy embedding worker right now",
                headers={"Retry-After": str(pool.retry_after_s())},
            )
        return healthy[: self._max_tries]

    def _request(self, worker: Worker, call: Call) -> tuple[Operation, bool, bool, RenderedRequest]:
        """Return the operation, whether it is a passthrough, whether the answer streams, and
        the request to send."""
        op = worker.plan.operations[call.op]
        record = worker.record
        streamed = op.streams == "always" or (op.streams == "on_request" and call.stream)
        if worker.plan.protocol == call.family and call.body is not None:
            body = dict(call.body)
            body["model"] = record.served_model
            if op.streams != "never":
                body["stream"] = call.stream  # explicit: Ollama streams when it is left out
            template = op.plan.render({})
            request = RenderedRequest("POST", template.url, template.headers, orjson.dumps(body))
            passthrough = True
        else:
            values = dict(call.values)
            values[MODEL_NAME] = record.served_model
            values[STREAM] = streamed
            request = op.plan.render(values)
            passthrough = False
        if call.request_id:
            request.headers["X-Request-ID"] = call.request_id
        return op, passthrough, streamed, request

    async def _send(
        self,
        worker: Worker,
        request: RenderedRequest,
        read_timed: bool,
        passthrough: bool,
        timeout_s: float,
    ) -> Response:
        try:
            response = await self._client.request(
                request.method,
                request.url,
                request.headers,
                request.body,
                # A stream may run long: what must not exceed timeout_s is each wait for data.
                # A whole answer has one deadline for the exchange, kept by the caller.
                read_timeout_s=timeout_s if read_timed else None,
            )
        except TimeoutError as exc:
            raise _AttemptFailed(
                f"no answer within {timeout_s:g}s",
                retryable=True,
                timed_out=True,
            ) from exc
        except ConnectFailed as exc:
            raise _AttemptFailed(
                f"could not reach the worker ({describe(exc)})", retryable=True
            ) from exc
        except HTTPClientError as exc:
            raise _AttemptFailed(f"bad HTTP exchange ({describe(exc)})", retryable=True) from exc
        if response.status >= 400:
            try:
                raw = await response.read_some(2048)
            except (HTTPClientError, TimeoutError):
                raw = b""
            finally:
                response.close()
            snippet = _redact(raw[:200].decode("utf-8", errors="replace"), worker)
            if passthrough and response.status in _CLIENT_STATUS:
                raise WorkerRejected(response.status, f"the model server refused: {snippet}")
            raise _AttemptFailed(
                f"worker answered HTTP {response.status}: {snippet}",
                retryable=response.status in _RETRYABLE_STATUS,
                ejectable=response.status >= 500,
                status=response.status,
            )
        return response

    async def _read(self, response: Response) -> bytes:
        limit = self._max_response_bytes
        length = response.content_length
        if length is not None and length > limit:
            raise _AttemptFailed(
                f"response of {length} bytes is over the {limit}-byte limit", retryable=False
            )
        try:
            return await response.read(limit)
        except ValueError as exc:
            raise _AttemptFailed(str(exc), retryable=False) from exc
        except TimeoutError as exc:
            raise _AttemptFailed(
                "the answer did not finish within the worker's timeout_s",
                retryable=True,
                timed_out=True,
            ) from exc
        except HTTPClientError as exc:
            raise _AttemptFailed(
                f"the worker broke off its answer ({describe(exc)})", retryable=True
            ) from exc

    async def _collect(self, response: Response, op: Operation) -> str:
        """Read a streamed answer to the end and join its text (for a non-streaming client)."""
        raw = await self._read(response)
        events = decoder(op.stream_format or "sse")
        extractor = op.stream_extractor
        parts: list[str] = []
        for payload in [*events.feed(raw), *events.close()]:
            if payload == b"[DONE]":
                break
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise _AttemptFailed(
                    f"a streamed chunk is not JSON ({exc})", retryable=False
                ) from exc
            if isinstance(doc, dict) and doc.get("error"):
                raise _AttemptFailed(
                    f"the worker reported an error: {error_text(doc)}", retryable=True
                )
            text = extractor.text_or_none(doc) if extractor is not None else None
            if text:
                parts.append(text)
        return "".join(parts)


def _rename_json(raw: bytes, worker: Worker, call: Call) -> bytes:
    if not worker.record.upstream_model or call.body is None:
        return raw
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _AttemptFailed(
            f"worker answered with something that is not JSON ({exc})", retryable=False
        ) from exc
    if isinstance(doc, dict) and "model" in doc:
        doc["model"] = call.body.get("model")
    return orjson.dumps(doc)


def _redact(text: str, worker: Worker) -> str:
    """Hide the worker's own header values (API keys) if its error body echoes them."""
    for value in worker.record.header.values():
        for secret in {value, value.rpartition(" ")[2]}:  # "Bearer sk-..." and "sk-..."
            if len(secret) >= 8:
                text = text.replace(secret, "***")
    return text
