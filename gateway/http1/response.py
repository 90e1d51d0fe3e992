"""A worker's answer as the client hands it out: head at once, body as it arrives."""

import asyncio
import collections
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.http1.connection import Connection

_READ_PAUSE_BYTES = 256 * 1024  # buffered and not yet consumed: stop reading the socket
# The most one call to the decompressor may produce: a gzip bomb inflates piece by piece,
# never more than this at once.
INFLATE_PIECE_BYTES = 256 * 1024


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
    """The worker was too slow: idle past the read timeout, head past the head timeout, or
    the exchange past its deadline."""


class TooLarge(HTTPClientError, ValueError):
    """The worker's answer is larger than the caller reads (a ValueError too, as read(limit)
    raised before)."""


class Response:
    """A worker's answer: status and headers at once, then the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_decompress",
        "_error",
        "_max_body_bytes",
        "_sink",
        "_stalled",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(
        self, conn: "Connection", status: int, headers: dict[str, str], max_body_bytes: int
    ) -> None:
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
        self._max_body_bytes = max_body_bytes

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self, limit: int | None = None) -> bytes:
        """Return the whole body; raise TooLarge as soon as it grows past `limit` bytes.

        The client's max_body_bytes bounds it too, counted after decompression. Past the
        limit, the connection is closed: nothing more is read or buffered.
        """
        cap = self._max_body_bytes if limit is None else min(limit, self._max_body_bytes)
        length = self.content_length
        if self._decompress is None and length is not None and length > cap:
            raise self._too_large(cap)
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > cap:
                parts.clear()
                raise self._too_large(cap)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _too_large(self, cap: int) -> TooLarge:
        error = self._error = TooLarge(f"the worker's answer is over the {cap}-byte limit")
        self._chunks.clear()
        self._buffered = 0
        self.close()
        return error

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
        """Yield the body as it arrives, until the answer is complete.

        A compressed answer comes inflated, in pieces of at most INFLATE_PIECE_BYTES.
        """
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                data = self._chunks.popleft()
                self._consumed(len(data))
                if self._decompress is None:
                    yield data
                else:
                    for piece in self._inflate(data):
                        yield piece
                continue
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
        `_READ_PAUSE_BYTES`, reading from the worker pauses, and so does inflating a
        compressed answer (what is left of it waits, compressed, until the sink drains).
        Returns when the body is complete; raises like `chunks()` when the worker fails.
        """
        self._sink = sink
        try:
            while True:
                if self._error is not None:
                    raise self._error
                while self._chunks and not self._stalled:  # arrived before, or held back
                    data = self._chunks.popleft()
                    self._consumed(len(data))
                    self._pass(sink, data)
                if self._stalled:
                    await self._unstall(sink)
                    continue
                if self._complete:
                    tail = self._tail()
                    if tail:
                        sink.write(tail)
                    return
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
        decompress, self._decompress = self._decompress, None
        if decompress is None:
            return b""
        try:
            # Every input was inflated to its end (no unconsumed tail): what is left is at
            # most what the last bits of input describe.
            return decompress.flush()
        except zlib.error as exc:
            raise self._undecompressible(exc) from exc

    async def _unstall(self, sink: "Sink") -> None:
        # The consumer's socket is slow: wait until it has sent most of its backlog. A socket
        # transport tells no one when it drains, so look every 10 ms (only while stalled).
        while sink.backlog() > _READ_PAUSE_BYTES // 2 and self._error is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self._stalled = False
        if self._conn is not None and self._buffered <= _READ_PAUSE_BYTES // 2:
            self._conn.resume()

    def _pass(self, sink: "Sink", data: bytes) -> None:
        """Write `data` to the sink (inflated, piece by piece); stall when the sink is full."""
        decompress = self._decompress
        if decompress is None:
            sink.write(data)
        else:
            try:
                while True:
                    piece = decompress.decompress(data, INFLATE_PIECE_BYTES)
                    if piece:
                        sink.write(piece)
                    data = decompress.unconsumed_tail
                    if not data:
                        break
                    if sink.backlog() > _READ_PAUSE_BYTES:
                        # The rest waits compressed, first in line, until the sink drains.
                        self._chunks.appendleft(data)
                        self._buffered += len(data)
                        break
            except zlib.error as exc:
                self.fail(self._undecompressible(exc))
                return
        if sink.backlog() > _READ_PAUSE_BYTES:
            self._stall()

    def _stall(self) -> None:
        if self._conn is not None:
            self._conn.pause()
        self._stalled = True
        self._wake()

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        """Inflate `data` in pieces of at most INFLATE_PIECE_BYTES."""
        decompress = self._decompress
        if decompress is None:
            yield data
            return
        try:
            while data:
                piece = decompress.decompress(data, INFLATE_PIECE_BYTES)
                data = decompress.unconsumed_tail
                if piece:
                    yield piece
        except zlib.error as exc:
            raise self._undecompressible(exc) from exc

    def _undecompressible(self, exc: zlib.error) -> "BadResponse":
        encoding = self.headers.get("content-encoding")
        return BadResponse(f"the worker's {encoding} answer does not decompress ({exc})")

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
        if sink is not None and not self._stalled and not self._chunks:
            self._pass(sink, data)
            return
        # Not forwarded, or the sink is full: kept until the consumer takes it.
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
        # The first error is the reason: a deadline that closed the connection is a timeout,
        # not the disconnect that follows from it.
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
