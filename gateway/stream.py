"""An open streamed answer, and the one decoder of worker streams (SSE or NDJSON) into text.

Once a stream has begun nothing is retried: a worker that fails midway ends it with
`StreamBroken`, which each route family turns into its own error event. The worker's place in
its pool is a `Slot`, held until the stream is closed.
"""

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from gateway.calls import WorkerRequest
from gateway.http1 import HTTPClientError, Response, Sink
from gateway.metering import UsageTap
from gateway.metrics import Metrics
from gateway.pool import Pool
from gateway.worker import Ejection, Worker
from templates import ExtractError, Operation, decoder
from templates.codecs import Codec, TemplateAnswers, WorkerCodec
from templates.conversation import (
    Event,
    Finish,
    Reply,
    Start,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)

_END: Any = object()


class StreamBroken(Exception):
    """The worker failed after the stream to the client had begun (message redacted)."""


class WorkerReported(ExtractError):
    """A streamed chunk was the worker's own error event."""


class Slot:
    """One request's place at a worker: counted in flight until released (once)."""

    __slots__ = ("_held", "_metrics", "first_at", "pool", "sent_at", "worker")

    def __init__(self, pool: Pool, worker: Worker, metrics: Metrics | None) -> None:
        self.pool = pool
        self.worker = worker
        self._metrics = metrics
        self.sent_at = time.perf_counter()
        self.first_at: float | None = None  # when the first piece went to the client
        self._held = True
        pool.entered(worker)

    def release(self) -> None:
        if self._held:
            self._held = False
            self.pool.left(self.worker)

    def done(self, *, ok: bool, reason: str = "", ejection: Ejection | None = None) -> None:
        """Count the stream's outcome for its worker, timed from the request to now."""
        stats = self.worker.stats
        if ok:
            stats.succeeded(self.sent_at, time.perf_counter())
        else:
            stats.failed(reason, ejection, self.sent_at, time.perf_counter())

    def first_piece(self) -> None:
        """The first piece of the answer is on its way to the client (time to first token)."""
        self.first_at = now = time.perf_counter()
        if self._metrics is not None:
            elapsed = now - self.sent_at
            self._metrics.observe_ttft(self.pool.model, self.worker.label, elapsed)


async def events(
    chunks: AsyncIterator[bytes], op: Operation, max_line_bytes: int
) -> AsyncIterator[Event]:
    """Decode a worker's stream into events; raise ExtractError on a bad chunk."""
    lines = decoder(op.stream_format or "sse", max_line_bytes=max_line_bytes)
    codec = op.codec
    read = codec.chunk if isinstance(codec, TemplateAnswers) else _chunks_of(codec)
    async for chunk in chunks:
        for payload in lines.feed(chunk):
            if payload == b"[DONE]":
                return
            for event in read(_doc(payload)):
                yield event
    for payload in lines.close():
        if payload == b"[DONE]":
            return
        for event in read(_doc(payload)):
            yield event


def _chunks_of(codec: Codec) -> Callable[[Any], list[Event]]:
    assert isinstance(codec, WorkerCodec), "embeddings do not stream"
    decode = codec.chunks()
    return lambda doc: decode(doc) if isinstance(doc, dict) else []


def _doc(payload: bytes) -> Any:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ExtractError(f"a streamed chunk is not JSON ({exc})") from exc
    if isinstance(doc, dict) and doc.get("error"):
        raise WorkerReported("the worker reported an error", error_text(doc), "it said")
    return doc


def events_of(reply: Reply) -> list[Event]:
    """The events of a whole answer, as if it had been streamed."""
    out: list[Event] = [Start()]
    if reply.text:
        out.append(TextDelta(reply.text))
    for i, call in enumerate(reply.tool_calls):
        out.append(ToolCallDelta(i, call.id, call.name, call.arguments))
    if reply.finish is not None:
        out.append(Finish(reply.finish))
    if reply.usage is not None:
        out.append(UsageReport(reply.usage))
    return out


class Stream:
    """An open streamed answer: iterate for events (translated) or the worker's own bytes."""

    note: dict[str, Any] | None = None  # what the gateway adds to the last chunk (none here)

    def __init__(
        self,
        slot: Slot,
        req: WorkerRequest,
        response: Response | None,
        *,
        reply: Reply | None = None,
        ejection: Ejection,
        max_line_bytes: int,
        tries: int,
        translate: bool = False,
    ) -> None:
        self.worker = slot.worker
        self.tries = tries
        # The worker's own stream goes on as bytes, unless `translate` asks for its events.
        self.passthrough = req.passthrough and not translate
        self._slot = slot
        self._req = req
        self._response = response  # None: the worker answered whole, `reply` is all of it
        self._reply = reply
        self._ejection = ejection
        self._max_line_bytes = max_line_bytes
        self._iter: AsyncIterator[Event | bytes] | None = None
        self._held: list[Event | bytes] = []  # read by `begin`, not yet handed on
        self._tap: UsageTap | None = None  # a passthrough stream's usage, read as it passes

    @property
    def usage(self) -> Usage | None:
        """The usage a passthrough stream reported (read from its bytes), once it has passed."""
        return self._tap.usage if self._tap is not None else None

    def estimated_completion(self) -> int:
        """An estimate of a passthrough stream's completion tokens: one per content event."""
        return self._tap.estimate() if self._tap is not None else 0

    @property
    def first_at(self) -> float | None:
        """When the first piece of the answer went to the client (None: none has)."""
        return self._slot.first_at

    def generation_s(self) -> float | None:
        """Seconds from the first piece of the answer until now (None: none came)."""
        first = self._slot.first_at
        return time.perf_counter() - first if first is not None else None

    @property
    def relayed(self) -> bool:
        """Whether the worker's own stream goes to the client as bytes (see `forward`)."""
        return self.passthrough and self._response is not None

    async def forward(self, sink: Sink) -> None:
        """Pass a `relayed` stream to `sink`, renaming the model in it if the worker serves
        it under another name; raise StreamBroken if the worker fails midway."""
        assert self._response is not None, "forward() is for relayed streams"
        rename = self._req.rename
        renaming = None
        if rename is not None:
            sink = renaming = ModelRenaming(sink, self.worker.record.served_model, rename)
        tap = self._tap = UsageTap(sink, self.worker.plan.protocol, strip=self._req.strip_usage)
        try:
            await self._response.forward(_FirstPiece(tap, self._slot))
        except (HTTPClientError, TimeoutError) as exc:
            raise self._broken(exc) from exc
        finally:
            tap.flush()
            if renaming is not None:
                renaming.flush()
        self._slot.done(ok=True)

    async def begin(self) -> None:
        """Read a translated stream up to its first piece of content, before the client's
        stream starts: a worker whose stream fails at once (an error event, a chunk the codec
        cannot read) is then still a failed attempt, failed over or told as an HTTP status.
        Raises what the worker's stream raised (ExtractError, HTTPClientError, TimeoutError)."""
        if self.passthrough or self._response is None:
            return
        self._iter = it = self._pieces()
        while True:
            piece = await anext(it, _END)
            if piece is _END:
                return
            self._held.append(piece)
            if isinstance(piece, TextDelta | ToolCallDelta | Finish):
                return

    async def pieces(self) -> AsyncIterator[Event | bytes]:
        """Yield the answer as it arrives; raise StreamBroken if the worker fails midway."""
        first = True
        try:
            async for piece in self._rest():
                if first:
                    first = False
                    self._slot.first_piece()
                yield piece
        except ExtractError as exc:
            reason = exc.describe(self.worker.redact)
            self._slot.done(ok=False, reason=reason)
            raise StreamBroken(f"{self.worker.label}: {reason}") from exc
        except (HTTPClientError, TimeoutError) as exc:
            raise self._broken(exc) from exc
        self._slot.done(ok=True)

    async def _rest(self) -> AsyncIterator[Event | bytes]:
        held, self._held = self._held, []
        for piece in held:
            yield piece
        it = self._iter if self._iter is not None else self._pieces()
        async for piece in it:
            yield piece

    def _pieces(self) -> AsyncIterator[Event | bytes]:
        response = self._response
        if response is None:
            return _all(events_of(self._reply or Reply("")))
        if not self.passthrough:
            return events(response.chunks(), self._req.op, self._max_line_bytes)
        return self._own_bytes(response)

    def _broken(self, exc: HTTPClientError | TimeoutError) -> StreamBroken:
        if isinstance(exc, HTTPClientError) and not isinstance(exc, TimeoutError):
            reason = self.worker.redact.quote(str(exc) or type(exc).__name__)
        else:
            reason = "it stalled or ran past the stream's time limit"
        self._slot.done(ok=False, reason=reason, ejection=self._ejection)
        return StreamBroken(f"the worker stopped mid-answer ({reason})")

    async def _own_bytes(self, response: Response) -> AsyncIterator[bytes]:
        """The worker's own stream, renamed and tapped like `forward` does it (for clients it
        cannot serve)."""
        rename = self._req.rename
        out = _Collected()
        renaming = None
        sink: Sink = out
        if rename is not None:
            sink = renaming = ModelRenaming(out, self.worker.record.served_model, rename)
        tap = self._tap = UsageTap(sink, self.worker.plan.protocol, strip=self._req.strip_usage)
        async for chunk in response.chunks():
            tap.write(chunk)
            if out.parts:
                yield out.take()
        tap.flush()
        if renaming is not None:
            renaming.flush()
        if out.parts:
            yield out.take()

    async def aclose(self) -> None:
        """Free the worker's slot and connection (closed if the answer was not read to its end)."""
        self._slot.release()
        response, self._response = self._response, None
        if response is not None:
            response.release()


async def _all(items: list[Event]) -> AsyncIterator[Event | bytes]:
    for item in items:
        yield item


class _FirstPiece:
    """A Sink that tells the slot when the first piece goes to the client, then only passes."""

    __slots__ = ("_sink", "_slot", "write")

    def __init__(self, sink: Sink, slot: Slot) -> None:
        self._sink = sink
        self._slot = slot
        self.write = self._first

    def _first(self, data: bytes) -> None:
        self._sink.write(data)
        self.write = self._sink.write  # from now on, straight to the sink
        self._slot.first_piece()

    def backlog(self) -> int:
        return self._sink.backlog()


_MAX_PENDING_BYTES = 1024 * 1024  # a longer unfinished line is passed on, renamed as far as it goes


class ModelRenaming:
    """A Sink that gives the model its client-facing name in each whole line of a stream.

    SSE and NDJSON events are single lines of JSON. In valid JSON the bytes `"model":"x"` can
    only be a member named model whose value is x (a quote inside a string is escaped), so a
    byte replacement per whole line renames exactly what decoding and re-encoding would, for a
    fraction of the cost, and leaves everything else byte for byte as the worker sent it.
    """

    __slots__ = ("_pairs", "_pending", "_sink")

    def __init__(self, sink: Sink, served: str, asked: bytes) -> None:
        self._sink = sink
        self._pending = b""  # the start of a line whose end has not arrived yet
        old, new = orjson.dumps(served), orjson.dumps(asked.decode())
        self._pairs = [
            (b'"model":' + old, b'"model":' + new),
            (b'"model": ' + old, b'"model": ' + new),
        ]

    def write(self, data: bytes) -> None:
        if self._pending:
            data, self._pending = self._pending + data, b""
        cut = data.rfind(b"\n") + 1
        if cut < len(data) and len(data) - cut <= _MAX_PENDING_BYTES:
            data, self._pending = data[:cut], data[cut:]
        if data:
            for old, new in self._pairs:
                data = data.replace(old, new)
            self._sink.write(data)

    def backlog(self) -> int:
        # Not counting `_pending`: it only shrinks when more is read, and a backlog that
        # pauses reading must be one that sending can clear.
        return self._sink.backlog()

    def flush(self) -> None:
        """Write what is left of a last line that never ended."""
        data, self._pending = self._pending, b""
        for old, new in self._pairs:
            data = data.replace(old, new)
        if data:
            self._sink.write(data)


class _Collected:
    """A Sink that keeps what is written, for an async generator to hand on."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def backlog(self) -> int:
        return 0

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def error_text(doc: Mapping[str, Any]) -> str:
    """Return the message of a worker's `{"error": ...}` document."""
    error = doc.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error)
    return str(error)
