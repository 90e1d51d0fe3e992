"""One attempt at one worker: send its request, read the answer, and say how it failed.

This is the one place where the worker client's errors are caught. Each failure becomes an
`AttemptFailed` that says whether another worker may be tried (`retryable`), whether it counts
toward the worker's passive ejection (`ejectable`) and whether it was a timeout. Every text the
worker sent that goes into a reason is redacted (its own header secrets) before it is cut.

Time is bounded by the worker client itself (gateway/http1/): a whole answer must arrive
within the worker's `timeout_s`; a stream's head within `timeout_s`, each wait for data within
`timeout_s`, and the whole stream within `stream_timeout_s`.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import orjson

from gateway.calls import Call, WorkerRequest
from gateway.errors import ContextTooLong, WorkerRefused
from gateway.http1 import Client, ConnectFailed, HTTPClientError, Response, TooLarge
from gateway.stream import WorkerReported, events
from gateway.worker import Worker
from templates import ExtractError
from templates.codecs import EmbeddingCodec, Embeddings, TemplateAnswers, WorkerCodec
from templates.conversation import Event, Reply, reply_of

T = TypeVar("T")

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# The client's request was at fault (too long a prompt, a field the model server refuses):
# told to the client with the worker's status and words, not failed over.
_CLIENT_STATUS = frozenset({400, 413, 422})
# Answers smaller than this are extracted on the event loop whatever the path: it is quick.
_EXTRACT_INLINE_BYTES = 64 * 1024
_ERROR_BODY_BYTES = 4096  # read of an error answer: enough to redact what the 200-char quote shows
# What model servers say when a prompt is longer than the context window: vLLM ("maximum
# context length is"), SGLang ("longer than the model's context length"), llama.cpp
# ("exceeds the available context size", exceed_context_size_error), OpenAI
# (context_length_exceeded), Anthropic ("prompt is too long"). Deliberately narrow: a 400 for
# any other reason must not send a request to another model.
_CONTEXT_TOO_LONG = re.compile(
    r"context[ _](length|window|size)[ _]?(is |of )?(exceeded|exceeds)"
    r"|maximum context length"
    r"|(longer than|exceeds?|exceeding|over) (the )?(model'?s? |available |maximum )*"
    r"context (length|window|size)"
    r"|exceed_context_size"
    r"|prompt is too long",
    re.IGNORECASE,
)
_CONTEXT_STATUS = frozenset({400, 413})


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one worker answer may be (from the settings)."""

    max_response_bytes: int
    max_stream_line_bytes: int
    stream_timeout_s: float
    extract_timeout_s: float


class AttemptFailed(Exception):
    """One attempt failed before anything reached the client."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        timed_out: bool = False,
        ejectable: bool | None = None,
        status: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after  # a 429's own Retry-After
        self.retryable = retryable
        self.timed_out = timed_out
        self.status = status
        # Counts toward passive ejection: the worker is down, hung or failing (not a 429, not
        # an answer the extract path could not read).
        self.ejectable = retryable if ejectable is None else ejectable


async def send(
    client: Client,
    worker: Worker,
    req: WorkerRequest,
    *,
    timeout_s: float,
    deadline: float,
) -> Response:
    """Send `req`; return the answer once its head is in, or raise AttemptFailed.

    A stream gets `timeout_s` for its head and for each wait, and `deadline` for all of it;
    a whole answer gets `deadline` (set by the caller to `timeout_s` from now) for all of it.
    """
    http = req.http
    try:
        if req.streamed:
            response = await client.request(
                http.method,
                http.url,
                http.headers,
                http.body,
                read_timeout_s=timeout_s,
                head_timeout_s=timeout_s,
                deadline=deadline,
            )
        else:
            response = await client.request(
                http.method, http.url, http.headers, http.body, deadline=deadline
            )
    except TimeoutError as exc:
        raise AttemptFailed(
            f"no answer within {timeout_s:g}s", retryable=True, timed_out=True
        ) from exc
    except ConnectFailed as exc:
        raise AttemptFailed(
            f"could not reach the worker ({worker.redact.quote(str(exc))})", retryable=True
        ) from exc
    except HTTPClientError as exc:
        raise AttemptFailed(
            f"bad HTTP exchange ({worker.redact.quote(str(exc) or type(exc).__name__)})",
            retryable=True,
        ) from exc
    if response.status >= 400:
        await _refused(worker, req, response)
    return response


async def _refused(worker: Worker, req: WorkerRequest, response: Response) -> None:
    try:
        raw = await response.read_some(_ERROR_BODY_BYTES)
    except (HTTPClientError, TimeoutError):
        raw = b""
    finally:
        response.close()
    status = response.status
    snippet = worker.redact.quote(raw)
    if status in _CONTEXT_STATUS and _CONTEXT_TOO_LONG.search(
        raw[:_ERROR_BODY_BYTES].decode("utf-8", "replace")
    ):
        raise ContextTooLong(
            f"the prompt is longer than the model's context window; shorten it or ask for "
            f"fewer tokens (the model server said: {snippet})"
        )
    if status in _CLIENT_STATUS:
        raise WorkerRefused(status, f"the model server refused the request: {snippet}")
    retry_after = response.headers.get("retry-after") if status == 429 else None
    raise AttemptFailed(
        f"worker answered HTTP {status}: {snippet}",
        retryable=status in _RETRYABLE_STATUS,
        ejectable=status >= 500,
        status=status,
        retry_after=retry_after if retry_after and retry_after.isdigit() else None,
    )


async def read_whole(response: Response, limits: Limits, timeout_s: float) -> bytes:
    """Read a whole answer within the size limit, or raise AttemptFailed."""
    limit = limits.max_response_bytes
    length = response.content_length
    try:
        if length is not None and length > limit:
            raise AttemptFailed(
                f"the answer of {length} bytes is over the {limit}-byte max_response_bytes",
                retryable=False,
            )
        return await response.read(limit)
    except TooLarge as exc:
        raise AttemptFailed(
            f"the answer is over the {limit}-byte max_response_bytes", retryable=False
        ) from exc
    except TimeoutError as exc:
        raise AttemptFailed(
            f"the answer did not finish within {timeout_s:g}s", retryable=True, timed_out=True
        ) from exc
    except HTTPClientError as exc:
        raise AttemptFailed(
            f"the worker broke off its answer ({exc or type(exc).__name__})", retryable=True
        ) from exc
    finally:
        response.release()


async def read_reply(worker: Worker, req: WorkerRequest, raw: bytes, limits: Limits) -> Reply:
    """Read a worker's whole chat or completion answer with its operation's codec."""
    codec = req.op.codec
    assert isinstance(codec, WorkerCodec | TemplateAnswers)
    costly = isinstance(codec, TemplateAnswers) and codec.costly
    return await _extract(worker, costly, raw, limits, codec.answer)


async def read_embeddings(
    worker: Worker, req: WorkerRequest, raw: bytes, limits: Limits
) -> Embeddings:
    """Read a worker's embeddings answer."""
    codec = req.op.codec
    assert isinstance(codec, EmbeddingCodec)
    return await _extract(worker, False, raw, limits, codec.answer)


async def _extract(
    worker: Worker,
    costly: bool,
    raw: bytes,
    limits: Limits,
    run: Callable[[bytes], T],
) -> T:
    try:
        if not costly or len(raw) <= _EXTRACT_INLINE_BYTES:
            return run(raw)
        # A JSONPath with wildcards or filters on a large answer: off the event loop, bounded.
        try:
            async with asyncio.timeout(limits.extract_timeout_s):
                return await asyncio.to_thread(run, raw)
        except TimeoutError:
            raise AttemptFailed(
                f"reading the answer with response_extract took over "
                f"{limits.extract_timeout_s:g}s on a {len(raw)}-byte answer; use a plain path "
                "such as $.choices[0].message.content",
                retryable=False,
            ) from None
    except ExtractError as exc:
        raise AttemptFailed(
            f"{exc.describe(worker.redact)}; fix the worker or its response_extract",
            retryable=False,
        ) from exc


def rename_json(raw: bytes, worker: Worker, call: Call) -> bytes:
    """Give a passthrough answer the model name the client asked for."""
    if call.body is None or call.body.get("model") == worker.record.served_model:
        return raw
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AttemptFailed(
            f"worker answered with something that is not JSON ({exc}); it began with "
            f"{worker.redact.quote(raw, 120)!r}",
            retryable=False,
        ) from exc
    if isinstance(doc, dict) and "model" in doc:
        doc["model"] = call.body.get("model")
    return orjson.dumps(doc)


async def collect(worker: Worker, req: WorkerRequest, response: Response, limits: Limits) -> Reply:
    """Read a streamed answer to its end and join it (for a client that wants it whole)."""
    seen: list[Event] = []
    try:
        async for event in events(_counted(response, limits), req.op, limits.max_stream_line_bytes):
            seen.append(event)
    except WorkerReported as exc:
        raise AttemptFailed(exc.describe(worker.redact), retryable=True) from exc
    except ExtractError as exc:
        raise AttemptFailed(exc.describe(worker.redact), retryable=False) from exc
    except TooLarge as exc:
        raise AttemptFailed(
            f"the streamed answer is over the {limits.max_response_bytes}-byte max_response_bytes",
            retryable=False,
        ) from exc
    except TimeoutError as exc:
        raise AttemptFailed(
            f"the streamed answer stalled or ran past {limits.stream_timeout_s:g}s",
            retryable=True,
            timed_out=True,
        ) from exc
    except HTTPClientError as exc:
        raise AttemptFailed(
            f"the worker broke off its answer ({exc or type(exc).__name__})", retryable=True
        ) from exc
    finally:
        response.release()
    return reply_of(seen)


async def _counted(response: Response, limits: Limits) -> AsyncIterator[bytes]:
    limit, size = limits.max_response_bytes, 0
    async for chunk in response.chunks():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"over {limit} bytes")
        yield chunk
