"""An open streamed answer: the worker's chunks, passed on as text pieces or as they are.

Once a stream has begun nothing is retried: a worker that fails midway ends it with
`StreamBroken`, which each route family turns into its own error event.
"""

import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from gateway.http1 import HTTPClientError, Response, Sink
from gateway.router import Pool, Worker
from templates import ExtractError, Operation, decoder

if TYPE_CHECKING:
    from gateway.upstream import Upstream


class StreamBroken(Exception):
    """The worker failed after the stream to the client had begun."""


class Stream:
    """An open streamed answer: iterate for text pieces (str) or passthrough bytes."""

    def __init__(
        self,
        pool: Pool,
        worker: Worker,
        response: Response,
        op: Operation,
        passthrough: bool,
        decoded: bool,
        rename: bytes | None,
        upstream: "Upstream",
    ) -> None:
        self.worker = worker
        self.tries = 1
        self.sent_at = time.perf_counter()
        self._pool = pool
        self._upstream = upstream
        self._ejection = upstream.ejection
        self.passthrough = passthrough
        self._response = response
        self._op = op
        self._decoded = decoded  # the worker streams: decode events; else one whole answer
        self._rename = rename
        self._closed = False

    @property
    def relayed(self) -> bool:
        """Whether the worker's own stream goes to the client as bytes (see `forward`)."""
        return self.passthrough and self._decoded

    async def forward(self, sink: Sink) -> None:
        """Pass a `relayed` stream to `sink`, renaming the model in it if the worker serves
        it under another name; raise StreamBroken if the worker fails midway."""
        renaming = None
        if self._rename is not None:
            sink = renaming = ModelRenaming(sink, self.worker.record.served_model, self._rename)
        try:
            await self._response.forward(sink)
        except (HTTPClientError, TimeoutError) as exc:
            raise self._broken(exc) from exc
        finally:
            if renaming is not None:
                renaming.flush()
        self.worker.stats.succeeded()

    def first_piece(self) -> None:
        """The first piece of the answer is on its way to the client (time to first token)."""
        self._upstream.first_piece(self._pool.model, self.worker, self.sent_at)

    def _broken(self, exc: HTTPClientError | TimeoutError) -> StreamBroken:
        reason = describe(exc) if not isinstance(exc, TimeoutError) else "timed out"
        self.worker.stats.failed(reason, self._ejection)
        return StreamBroken(f"the worker stopped mid-answer ({reason})")

    async def pieces(self) -> AsyncIterator[str | bytes]:
        """Yield the answer as it arrives; raise StreamBroken if the worker fails midway."""
        first = True
        try:
            async for piece in self._pieces():
                if first:
                    first = False
                    self.first_piece()
                yield piece
        except ExtractError as exc:
            self.worker.stats.failed(str(exc), None)
            raise StreamBroken(f"{self.worker.label}: {exc}") from exc
        except (HTTPClientError, TimeoutError) as exc:
            raise self._broken(exc) from exc
        self.worker.stats.succeeded()

    async def _pieces(self) -> AsyncIterator[str | bytes]:
        if self.passthrough:
            async for chunk in self._own_bytes():
                yield chunk
        elif self._decoded:
            async for piece in self._decode():
                yield piece
        else:
            raw = await self._response.read()
            yield self._op.extractor.extract(raw)

    async def _decode(self) -> AsyncIterator[str | bytes]:
        fmt = self._op.stream_format or "sse"
        events = decoder(fmt)
        extractor = self._op.stream_extractor
        done = False
        async for chunk in self._response.chunks():
            for payload in events.feed(chunk):
                if payload == b"[DONE]":
                    done = True
                    break
                doc = loads_chunk(payload)
                if isinstance(doc, dict) and doc.get("error"):
                    raise ExtractError(f"the worker reported an error: {error_text(doc)}")
                text = extractor.text_or_none(doc) if extractor is not None else None
                if text:
                    yield text
            if done:
                break

    async def _own_bytes(self) -> AsyncIterator[bytes]:
        """The worker's own stream, renamed like `forward` does (for clients it cannot serve)."""
        if self._rename is None:
            async for chunk in self._response.chunks():
                yield chunk
            return
        out = _Collected()
        renaming = ModelRenaming(out, self.worker.record.served_model, self._rename)
        async for chunk in self._response.chunks():
            renaming.write(chunk)
            if out.parts:
                yield out.take()
        renaming.flush()
        if out.parts:
            yield out.take()

    async def aclose(self) -> None:
        """Release the worker's connection (closed if the answer was not read to its end)."""
        if self._closed:
            return
        self._closed = True
        self._upstream.left(self._pool, self.worker)
        self._response.release()


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


def loads_chunk(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ExtractError(f"a streamed chunk is not JSON ({exc})") from exc


def error_text(doc: Mapping[str, Any]) -> str:
    error = doc.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error)
    return str(error)


def describe(exc: BaseException) -> str:
    """Return a short text for a client-side exception, for logs and error messages."""
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
