"""Pools of keep-alive connections per worker, bounded in total and per worker."""

import asyncio
import collections
import functools
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


@dataclass(eq=False)
class Pool:
    """The connections to one origin: idle ones to reuse, and a cap on how many are open."""

    client: "Client"
    origin: Origin
    idle: list[Connection] = field(default_factory=list)
    open: int = 0

    def put_back(self, conn: Connection) -> None:
        conn.reused = True
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)
        self.client.slot_freed()

    def forget(self, conn: Connection) -> None:
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
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._open = 0
        self.connections: set[Connection] = set()  # every open one, idle or busy
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

    async def _acquire(self, origin: Origin) -> Connection:
        if self._closed:
            raise ConnectFailed("the client is closed")
        pool = self._pools.get(origin.key)
        if pool is None:
            pool = self._pools[origin.key] = Pool(self, origin)
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
        return conn

    def _connect_failed(self, pool: Pool, conn: Connection) -> None:
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
