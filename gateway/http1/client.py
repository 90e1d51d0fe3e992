"""Pools of keep-alive connections per worker, bounded in total and per worker."""

import asyncio
import collections
import functools
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from gateway.http1.connection import Connection
from gateway.http1.response import ConnectFailed, Disconnected, Response


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


# A URL with nothing left to percent-encode (every rendered worker template is one).
_ENCODED = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")


@functools.lru_cache(maxsize=4096)
def parse_url(url: str) -> Origin:
    """Split an http(s) URL once (worker URLs repeat, so the result is cached).

    yarl percent-encodes a non-ASCII path or query and IDNA-encodes the host, as aiohttp did.
    A URL that needs no encoding is sent as it stands: encoding would also normalise it,
    decoding `%2E%2E` that a template put for a prompt of ".." into a `..` that walks up the
    worker's path.
    """
    try:
        parsed = URL(url, encoded=_ENCODED.fullmatch(url) is not None)
        port = parsed.port
    except ValueError as exc:
        raise ConnectFailed(f"not a valid URL: {url[:200]!r} ({exc})") from exc
    host = parsed.raw_host
    if parsed.scheme not in ("http", "https") or not host or port is None:
        raise ConnectFailed(f"not an http(s) URL: {url[:200]!r}")
    header = parsed.host_port_subcomponent or host  # never the credentials of the URL
    return Origin(parsed.scheme, host, port, header, parsed.raw_path_qs or "/")


Waiters = collections.deque[asyncio.Future[None]]


@dataclass(eq=False)
class Pool:
    """The connections to one origin: idle ones to reuse, and a cap on how many are open."""

    client: "Client"
    origin: Origin
    idle: list[Connection] = field(default_factory=list)
    open: int = 0
    waiters: Waiters = field(default_factory=collections.deque)  # held back by the per-host cap

    def put_back(self, conn: Connection) -> None:
        conn.reused = True
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)
        self.client.idled(self, conn)

    def forget(self, conn: Connection) -> None:
        """`conn` is closed: drop it, and free its place (once)."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self.open -= 1
            self.client.closed(self, conn)


class Client:
    """Pooled keep-alive HTTP/1.1 connections to workers, bounded in total and per worker.

    A request that finds no idle connection and no room waits in a queue: its pool's when the
    per-worker cap holds it back, the client's when the total cap does (an idle connection to
    another worker is closed to make room first). Each freed place wakes one waiter; a waiter
    that cannot use it, or is cancelled after being woken, passes the wake-up on, so none is
    lost. The wait is bounded by the connect timeout.

    `max_header_bytes` and `max_headers` bound the heads of each exchange's answers,
    `max_body_bytes` what `Response.read()` gathers (after decompression).
    """

    def __init__(
        self,
        *,
        limit: int = 4096,
        limit_per_host: int = 0,
        connect_timeout_s: float = 5.0,
        keepalive_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 100,
        max_body_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        # What a worker may send per exchange (gateway/http1/__init__.py, "Bounds").
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._open = 0
        self.connections: set[Connection] = set()  # every open one, idle or busy
        self._idle: dict[Connection, None] = {}  # every idle one, oldest first
        self._waiters: Waiters = collections.deque()  # held back by the total cap
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        read_timeout_s: float | None = None,
        head_timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> Response:
        """Send one request; return once the answer's head has arrived.

        `read_timeout_s` bounds each wait for data, `head_timeout_s` the time from the
        request's writing until the final answer's head is in (interim 1xx answers do not
        reset it), `deadline` (a `loop.time()` instant) the whole exchange, body included;
        past any of them the exchange fails with ReadTimeout and its connection is closed.

        A reused keep-alive connection that the worker had closed fails before any byte of
        answer: the request is then sent once more, on a new connection.
        """
        origin = parse_url(url)
        head = _request_head(method, origin, headers, None if body is None else len(body))
        rest = None
        if body is not None and len(body) >= 65536:
            rest = body  # written on its own: not copied into one buffer with the head
        elif body:
            head += body
        fresh = False
        while True:
            conn = await self._acquire(origin, fresh=fresh)
            try:
                return await conn.exchange(head, rest, read_timeout_s, head_timeout_s, deadline)
            except Disconnected:
                conn.done(reusable=False)
                if conn.reused and not conn.received and not fresh:
                    fresh = True  # a stale keep-alive connection: once more on a new one
                    continue
                raise
            except BaseException:
                conn.done(reusable=False)
                raise

    async def close(self) -> None:
        """Close every connection; later requests fail."""
        self._closed = True
        for conn in list(self.connections):
            conn.close()
            conn.pool.forget(conn)
        queues = [self._waiters, *(pool.waiters for pool in self._pools.values())]
        for queue in queues:
            for waiter in queue:
                if not waiter.done():
                    waiter.set_exception(ConnectFailed("the client is closed"))
            queue.clear()

    async def _acquire(self, origin: Origin, *, fresh: bool) -> Connection:
        pool = self._pools.get(origin.key)
        if pool is None:
            pool = self._pools[origin.key] = Pool(self, origin)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout_s
        woken_from: Waiters | None = None
        while True:
            if self._closed:
                raise ConnectFailed("the client is closed")
            conn = None if fresh else self._reuse(pool, loop.time())
            if conn is not None:
                return conn
            if self._limit_per_host and pool.open >= self._limit_per_host:
                queue = None if fresh and self._evict(pool) else pool.waiters
            else:
                queue = None
            if queue is None and self._open >= self._limit and not self._evict(None):
                queue = self._waiters
            if queue is None:
                return await self._connect(pool, loop)
            if woken_from is not None and woken_from is not queue:
                # Woken for a place the other cap keeps this request from using: the next
                # waiter of that queue may be able to.
                _wake(woken_from)
            await self._wait(queue, deadline, loop)
            woken_from = queue

    def _reuse(self, pool: Pool, now: float) -> Connection | None:
        while pool.idle:
            conn = pool.idle.pop()
            self._idle.pop(conn, None)
            if conn.transport is not None and now - conn.idle_since < self._keepalive_s:
                return conn
            conn.close()
            pool.forget(conn)
        return None

    def _evict(self, pool: Pool | None) -> bool:
        """Close the oldest idle connection (of `pool`, or of any); return whether one was."""
        candidates = pool.idle[:1] if pool is not None else list(self._idle)[:1]
        for conn in candidates:
            conn.close()
            conn.pool.forget(conn)
            return True
        return False

    async def _wait(self, queue: Waiters, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        waiter = loop.create_future()
        queue.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise ConnectFailed(
                f"no free connection to the worker within {self._connect_timeout_s:g}s "
                "(upstream_max_connections or upstream_max_connections_per_worker reached)"
            ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                _wake(queue)  # woken, then cancelled: the wake-up goes to the next one
            raise

    async def _connect(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> Connection:
        origin = pool.origin
        self._open += 1
        pool.open += 1
        conn = Connection(pool, loop)
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
        if self._closed:  # closed while connecting
            self._connect_failed(pool, conn)
            raise ConnectFailed("the client is closed")
        return conn

    def _connect_failed(self, pool: Pool, conn: Connection) -> None:
        conn.close()
        pool.forget(conn)

    # Called by the pools.

    def idled(self, pool: Pool, conn: Connection) -> None:
        """`conn` is idle: a request for its worker can take it, or another can close it."""
        self._idle[conn] = None
        _wake(pool.waiters) or _wake(self._waiters)

    def closed(self, pool: Pool, conn: Connection) -> None:
        """`conn` is closed: one place more in its pool and in the total."""
        self._open -= 1
        self.connections.discard(conn)
        self._idle.pop(conn, None)
        if not self._closed:
            _wake(pool.waiters)
            _wake(self._waiters)


def _wake(queue: Waiters) -> bool:
    """Wake the first waiter still waiting; return whether there was one."""
    while queue:
        waiter = queue.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False


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
