"""A worker's answer as the client hands it out: head at once, body as it arrives."""

import asyncio
import collections
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.http1.connection import Connection

_READ_PAUSE_BYTES = 256 * 1024  # buffered and not yet consumed: stop reading the socket


class Sink(Protocol):
    """Where `Response.forward` hands the body: a socket, seen as a write and its backlog."""

    def write(self, data: bytes) -> None: ...

    def backlog(self) -> int:
        """Bytes written and not yet sent."""
        ...


class HTTPClientError(Exception):
    """Calling the worker failed: base class of the errors below."""


class ConnectFailed(HTTPClientError):
    """No connection to the worker could be made (refused, unreachable, DNS, TLS)."""


class Disconnected(HTTPClientError):
    """The worker closed the connection before its answer was complete."""


class BadResponse(HTTPClientError):
    """The worker's answer is not valid HTTP/1.1."""


class ReadTimeout(HTTPClientError, TimeoutError):
    """No data came from the worker within the read timeout."""


class Response:
    """A worker's answer: status and headers at once, then the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_decompress",
        "_error",
        "_sink",
        "_stalled",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: "Connection", status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers  # lower-cased names; a repeated header keeps its last value
        self._conn: Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        encoding = headers.get("content-encoding", "").lower()
        self._decompress = (
            zlib.decompressobj(wbits=47) if encoding in ("gzip", "deflate", "x-gzip") else None
        )
        self._sink: Sink | None = None
        self._stalled = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self, limit: int | None = None) -> bytes:
        """Return the whole body; raise ValueError as soon as it grows past `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError(f"response is over the {limit}-byte limit")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_some(self, n: int) -> bytes:
        """Return up to `n` bytes of the body (for quoting an error answer)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            parts.append(chunk)
            size += len(chunk)
            if size >= n:
                break
        return b"".join(parts)[:n]

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body in the pieces it arrives in, until the answer is complete."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._consumed(len(data))
                if self._decompress is not None:
                    data = self._inflate(data)
                    if not data:
                        continue
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self._complete:
                tail = self._tail()
                if tail:
                    yield tail
                return
            await self._more()

    async def forward(self, sink: "Sink") -> None:
        """Hand the body to `sink` piece by piece, from the socket callback itself.

        For relaying a stream: no task switch and no queue per piece, which halves the cost of
        a relayed chunk (bench/streams). While the sink reports more unsent bytes than
        `_READ_PAUSE_BYTES`, reading from the worker pauses. Returns when the body is complete;
        raises like `chunks()` when the worker fails.
        """
        while self._chunks:  # what arrived before forwarding began
            data = self._chunks.popleft()
            self._consumed(len(data))
            self._pass(sink, data)
        self._sink = sink
        try:
            while True:
                if self._error is not None:
                    raise self._error
                if self._complete:
                    tail = self._tail()
                    if tail:
                        sink.write(tail)
                    return
                if self._stalled:
                    await self._unstall(sink)
                    continue
                await self._more()
        finally:
            self._sink = None

    async def _more(self) -> None:
        """Wait until the connection has more for this answer (or fails, or completes)."""
        conn = self._conn
        if conn is None:
            raise Disconnected("the response was released")
        self._waiter = conn.loop.create_future()
        conn.reading()
        try:
            await self._waiter
        finally:
            self._waiter = None
            conn.waited()

    def _tail(self) -> bytes:
        """What a decompressor still holds once the body is complete."""
        return self._inflate(b"", last=True) if self._decompress is not None else b""

    async def _unstall(self, sink: "Sink") -> None:
        # The consumer's socket is slow: wait until it has sent most of its backlog. A socket
        # transport tells no one when it drains, so look every 10 ms (only while stalled).
        while sink.backlog() > _READ_PAUSE_BYTES // 2 and self._error is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self._stalled = False
        if self._conn is not None:
            self._conn.resume()

    def _pass(self, sink: "Sink", data: bytes) -> None:
        if self._decompress is not None:
            try:
                data = self._inflate(data)
            except BadResponse as exc:
                self.fail(exc)
                return
        if data:
            sink.write(data)

    def _inflate(self, data: bytes, *, last: bool = False) -> bytes:
        decompress = self._decompress
        assert decompress is not None
        try:
            if last:
                self._decompress = None
                return decompress.flush()
            return decompress.decompress(data)
        except zlib.error as exc:
            encoding = self.headers.get("content-encoding")
            raise BadResponse(
                f"the worker's {encoding} answer does not decompress ({exc})"
            ) from exc

    def release(self) -> None:
        """Give the connection back to its pool if the answer was read to its end, else close."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done(reusable=self._complete and self._error is None)

    def close(self) -> None:
        """Close the connection (an answer not read to its end cannot share the connection)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done(reusable=False)

    # Called by its connection (gateway/http1/connection.py).

    def feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            self._pass(sink, data)
            if sink.backlog() > _READ_PAUSE_BYTES and self._conn is not None:
                self._conn.pause()
                self._stalled = True
                self._wake()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_PAUSE_BYTES and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _consumed(self, size: int) -> None:
        self._buffered -= size
        if self._buffered <= _READ_PAUSE_BYTES // 2 and self._conn is not None:
            self._conn.resume()

    def finish(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
