"""The HTTP/1.1 client the gateway calls workers with: keep-alive pools and llhttp parsing.

aiohttp's client was the largest single cost of a proxied request (bench/, py-spy): it builds a
request object, a response object, cookie and redirect handling, a payload writer and a stream
reader for every call. Calling a worker needs much less: one pooled connection per call, the
request written as one buffer, the answer parsed by llhttp (httptools) straight from the
socket callbacks into the response. Streamed answers are handed on chunk by chunk as they
arrive, with reading paused while the consumer lags behind.

Deliberately not here: redirects (a worker that redirects is misconfigured), cookies (one
client's cookie must never reach another), proxies from the environment, HTTP/2.
Compressed answers (gzip, deflate) are decompressed, in case a template asks for them.
"""

import asyncio
import collections
import functools
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import httptools
from yarl import URL

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


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request goes: the pool key, and the parts of its request line."""

    scheme: str
    host: str
    port: int
    host_header: str
    target: str  # path and query

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


@functools.lru_cache(maxsize=4096)
def parse_url(url: str) -> Origin:
    """Split an http(s) URL once (worker URLs repeat, so the result is cached).

    yarl percent-encodes a non-ASCII path or query and IDNA-encodes the host, as aiohttp did.
    """
    try:
        parsed = URL(url)
        port = parsed.port
    except ValueError as exc:
        raise ConnectFailed(f"not a valid URL: {url[:200]!r} ({exc})") from exc
    host = parsed.raw_host
    if parsed.scheme not in ("http", "https") or not host or port is None:
        raise ConnectFailed(f"not an http(s) URL: {url[:200]!r}")
    header = parsed.host_port_subcomponent or host  # never the credentials of the URL
    return Origin(parsed.scheme, host, port, header, parsed.raw_path_qs or "/")


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

    def __init__(self, conn: "_Connection", status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers  # lower-cased names; a repeated header keeps its last value
        self._conn: _Connection | None = conn
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
                    data = self._decompress.decompress(data)
                    if not data:
                        continue
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self._complete:
                if self._decompress is not None:
                    tail, self._decompress = self._decompress.flush(), None
                    if tail:
                        yield tail
                return
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
                    if self._decompress is not None:
                        tail, self._decompress = self._decompress.flush(), None
                        if tail:
                            sink.write(tail)
                    return
                if self._stalled:
                    await self._unstall(sink)
                    continue
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
        finally:
            self._sink = None

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
            data = self._decompress.decompress(data)
        if data:
            sink.write(data)

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

    # Called by the connection.

    def _feed(self, data: bytes) -> None:
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

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self._complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a worker, carrying one exchange at a time."""

    def __init__(self, pool: "_Pool", loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reused = False
        self.counted = True  # in its pool's count of open connections
        self.idle_since = 0.0
        self._headers: dict[str, str] = {}
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._keep_alive = False
        self._paused = False
        self._read_timeout_s: float | None = None
        self._last_data = 0.0
        self._waiting = 0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A request written in two parts (head, then a large body) must not wait for the
            # worker's delayed ACK of the first.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(BadResponse("the worker tried to switch protocols"))
        except httptools.HttpParserError as exc:
            self._broken(BadResponse(f"the worker's answer is not valid HTTP/1.1 ({exc})"))

    def eof_received(self) -> bool:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost(exc)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = Response(self, self.parser.get_status_code(), self._headers)
        self._response = response
        self._keep_alive = self.parser.should_keep_alive()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None:
            self._response._finish()

    # The exchange

    async def exchange(self, request: bytes, read_timeout_s: float | None) -> Response:
        """Write `request`; return the response once its head has arrived."""
        assert self.transport is not None
        self._read_timeout_s = read_timeout_s
        self._head = self.loop.create_future()
        self._response = None
        self.transport.write(request)
        self.reading()
        try:
            return await self._head
        finally:
            self._head = None
            self.waited()

    def reading(self) -> None:
        """A task waits for data: from now on, the read timeout counts."""
        self._waiting += 1
        if self._waiting == 1:
            self._last_data = self.loop.time()
            if self._read_timeout_s is not None and self._timer is None:
                self._timer = self.loop.call_later(self._read_timeout_s, self._check_idle)

    def waited(self) -> None:
        self._waiting -= 1

    def _check_idle(self) -> None:
        # One timer per waiting exchange, moved on only when it fires: no work per chunk.
        self._timer = None
        timeout_s = self._read_timeout_s
        if timeout_s is None or self._waiting <= 0 or self.transport is None:
            return
        idle_s = self.loop.time() - self._last_data
        if idle_s >= timeout_s:
            self._broken(ReadTimeout(f"no data from the worker for {timeout_s:g}s"))
        else:
            self._timer = self.loop.call_later(timeout_s - idle_s, self._check_idle)

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def done(self, *, reusable: bool) -> None:
        """The exchange is over: back to the pool when the connection can carry another."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._response = None
        self._read_timeout_s = None
        if reusable and self._keep_alive and self.transport is not None and not self._paused:
            self.pool.put_back(self)
        else:
            self.close()
            self.pool.forget(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _broken(self, error: BaseException) -> None:
        self._fail(error)
        self.close()

    def _lost(self, exc: BaseException | None) -> None:
        response = self._response
        if exc is None and response is not None and _ends_at_close(response.headers):
            response._finish()  # a body without a length ends where the connection does
        self._fail(Disconnected(f"the worker closed the connection{f' ({exc})' if exc else ''}"))
        self.pool.forget(self)

    def _fail(self, error: BaseException) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        if self._response is not None:
            self._response._fail(error)


@dataclass(eq=False)
class _Pool:
    """The connections to one origin: idle ones to reuse, and a cap on how many are open."""

    client: "Client"
    origin: Origin
    idle: list[_Connection] = field(default_factory=list)
    open: int = 0

    def put_back(self, conn: _Connection) -> None:
        conn.reused = True
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)
        self.client.slot_freed()

    def forget(self, conn: _Connection) -> None:
        """`conn` is closed: drop it, and free its place (once)."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self.open -= 1
            self.client.connections.discard(conn)
            self.client.closed_one()


class Client:
    """Pooled keep-alive HTTP/1.1 connections to workers, bounded in total and per worker."""

    def __init__(
        self,
        *,
        limit: int = 4096,
        limit_per_host: int = 0,
        connect_timeout_s: float = 5.0,
        keepalive_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._open = 0
        self.connections: set[_Connection] = set()  # every open one, idle or busy
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        read_timeout_s: float | None = None,
    ) -> Response:
        """Send one request; return once the answer's head has arrived.

        A reused keep-alive connection that the worker closed meanwhile fails before any byte
        of answer: the request is then sent once more on a new connection.
        """
        origin = parse_url(url)
        head = _request_head(method, origin, headers, None if body is None else len(body))
        body = body or b""
        payload = head + body if len(body) < 65536 else None
        for _ in range(2):
            conn = await self._acquire(origin)
            try:
                if payload is None:
                    assert conn.transport is not None
                    conn.transport.write(head)
                    response = await conn.exchange(body, read_timeout_s)
                else:
                    response = await conn.exchange(payload, read_timeout_s)
            except Disconnected:
                conn.done(reusable=False)
                if conn.reused:
                    continue  # a stale keep-alive connection: once more on a fresh one
                raise
            except BaseException:
                conn.done(reusable=False)
                raise
            return response
        raise Disconnected("the worker closed two connections in a row before answering")

    async def close(self) -> None:
        """Close every connection; later requests fail."""
        self._closed = True
        for conn in list(self.connections):
            conn.close()
            conn.pool.forget(conn)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the client is closed"))

    async def _acquire(self, origin: Origin) -> _Connection:
        if self._closed:
            raise ConnectFailed("the client is closed")
        pool = self._pools.get(origin.key)
        if pool is None:
            pool = self._pools[origin.key] = _Pool(self, origin)
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while pool.idle:
                conn = pool.idle.pop()
                if conn.transport is not None and now - conn.idle_since < self._keepalive_s:
                    return conn
                conn.close()
                pool.forget(conn)
            if self._open < self._limit and (
                not self._limit_per_host or pool.open < self._limit_per_host
            ):
                return await self._connect(pool, loop)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter

    async def _connect(self, pool: _Pool, loop: asyncio.AbstractEventLoop) -> _Connection:
        origin = pool.origin
        self._open += 1
        pool.open += 1
        conn = _Connection(pool, loop)
        self.connections.add(conn)
        try:
            tls = origin.scheme == "https"
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=(self._ssl or _default_tls()) if tls else None,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError as exc:
            self._connect_failed(pool, conn)
            raise ConnectFailed(f"connect timed out after {self._connect_timeout_s:g}s") from exc
        except (OSError, ssl.SSLError) as exc:
            self._connect_failed(pool, conn)
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        except BaseException:
            self._connect_failed(pool, conn)
            raise
        return conn

    def _connect_failed(self, pool: _Pool, conn: _Connection) -> None:
        conn.close()
        pool.forget(conn)

    def closed_one(self) -> None:
        self._open -= 1
        self.slot_freed()

    def slot_freed(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _ends_at_close(headers: Mapping[str, str]) -> bool:
    """Whether an answer's body is delimited by the close of the connection (HTTP/1.0 style)."""
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    return not chunked and "content-length" not in headers


@functools.lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _request_head(
    method: str, origin: Origin, headers: Mapping[str, str], length: int | None
) -> bytes:
    lines = [f"{method} {origin.target} HTTP/1.1", f"Host: {origin.host_header}"]
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode()  # header values in UTF-8, as aiohttp sends them
