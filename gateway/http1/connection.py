"""One keep-alive connection to a worker: llhttp callbacks feeding the current Response."""

import asyncio
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httptools

from gateway.http1.response import (
    BadResponse,
    Disconnected,
    ReadTimeout,
    Response,
)

if TYPE_CHECKING:
    from gateway.http1.client import Pool


class Connection(asyncio.Protocol):
    """One keep-alive connection to a worker, carrying one exchange at a time."""

    def __init__(self, pool: "Pool", loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reused = False
        self.counted = True  # in its pool's count of open connections
        self.received = False  # any byte of answer to the current request
        self._spent = False  # the answer was framed oddly: not to be reused
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
        if self._head is None and self._response is None:
            # Bytes on an idle keep-alive connection (a 408 before the worker hangs up, say)
            # would be read as the answer to the next request: the connection is spent.
            self.close()
            self.pool.forget(self)
            return
        self.received = True
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
        if self._head is None:
            # A second answer to one request: whatever it is, the connection cannot be trusted
            # to frame the next exchange.
            self._spent = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        response = Response(self, status, self._headers)
        self._response = response
        self._keep_alive = self.parser.should_keep_alive()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response.feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None:
            self._response.finish()

    # The exchange

    async def exchange(self, request: bytes, read_timeout_s: float | None) -> Response:
        """Write `request`; return the response once its head has arrived."""
        assert self.transport is not None
        self._read_timeout_s = read_timeout_s
        self._head = self.loop.create_future()
        self._response = None
        self.received = False
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
        spent = self._spent or self._paused or not self._keep_alive
        if reusable and not spent and self.transport is not None:
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
            response.finish()  # a body without a length ends where the connection does
        self._fail(Disconnected(f"the worker closed the connection{f' ({exc})' if exc else ''}"))
        self.pool.forget(self)

    def _fail(self, error: BaseException) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        if self._response is not None:
            self._response.fail(error)


def _ends_at_close(headers: Mapping[str, str]) -> bool:
    """Whether an answer's body is delimited by the close of the connection (HTTP/1.0 style)."""
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    return not chunked and "content-length" not in headers
