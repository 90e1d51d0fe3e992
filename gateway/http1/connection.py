"""One keep-alive connection to a worker: llhttp callbacks feeding the current Response."""

import asyncio
import math
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httptools

from gateway.http1.response import (
    BadResponse,
    Disconnected,
    HTTPClientError,
    ReadTimeout,
    Response,
)

if TYPE_CHECKING:
    from gateway.http1.client import Pool


class Connection(asyncio.Protocol):
    """One keep-alive connection to a worker, carrying one exchange at a time.

    What one exchange may cost is bounded here: the bytes and the number of header fields in
    its answers' heads (interim 1xx ones and trailers included), the time until the final
    head is in, the time between data, and an absolute deadline. One timer per connection
    keeps the three times, moved on only when it fires: no work per chunk.
    """

    def __init__(self, pool: "Pool", loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        client = pool.client
        self._max_header_bytes = client.max_header_bytes
        self._max_headers = client.max_headers
        self._max_body_bytes = client.max_body_bytes
        # A head llhttp has not finished is held by httptools, which calls on_header only for
        # a complete field: so also bound the raw bytes of an unfinished head, with room for
        # each field's ": " and CRLF and for the status line.
        self._max_raw_head_bytes = client.max_header_bytes + 8 * client.max_headers + 1024
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
        self._gone: HTTPClientError | None = None  # why it closed before any request
        self._header_bytes_left = 0  # for this exchange (status, names and values)
        self._headers_left = 0
        self._raw_head_left = 0  # bytes of data that left the final head unfinished
        self._read_timeout_s: float | None = None
        self._head_timeout_s: float | None = None
        self._head_by = math.inf  # the final head must be in by then
        self._deadline = math.inf  # the whole exchange must be over by then
        self._last_data = 0.0
        self._waiting = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

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
            # would be read as the answer to the next request: the connection is spent. On a
            # new one, the worker talks first: not an HTTP server (an SSH banner, say).
            if not self.reused:
                self._gone = BadResponse(
                    "the worker sent data before the request was written: it does not speak "
                    "HTTP/1.1 there (check the worker's URL and port)"
                )
            self.close()
            self.pool.forget(self)
            return
        self.received = True
        self._last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(BadResponse("the worker tried to switch protocols"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HTTPClientError):  # raised by a callback below
                self._broken(cause)
            else:
                self._broken(BadResponse(f"the worker's answer is not valid HTTP/1.1 ({exc})"))
        except httptools.HttpParserError as exc:
            self._broken(BadResponse(f"the worker's answer is not valid HTTP/1.1 ({exc})"))
        if self._head is not None:  # all of `data` was head, and the final head is not in
            self._raw_head_left -= len(data)
            if self._raw_head_left < 0:
                self._broken(self._head_too_large())

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

    def on_status(self, status: bytes) -> None:
        self._header_bytes_left -= len(status)  # llhttp may hand the reason phrase in pieces
        if self._header_bytes_left < 0:
            raise self._head_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes_left -= len(name) + len(value)
        self._headers_left -= 1
        if self._header_bytes_left < 0 or self._headers_left < 0:
            raise self._head_too_large()
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def _head_too_large(self) -> BadResponse:
        if self._headers_left < 0:
            return BadResponse(
                f"the worker's answer headers are over {self._max_headers} headers; "
                "fix the worker or raise max_response_headers"
            )
        return BadResponse(
            f"the worker's answer headers are over {self._max_header_bytes} bytes; "
            "fix the worker or raise max_response_header_bytes"
        )

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        response = Response(self, status, self._headers, self._max_body_bytes)
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
            self._deadline = math.inf  # the answer is in: holding it costs the worker nothing

    # The exchange

    async def exchange(
        self,
        request: bytes,
        body: bytes | None,
        read_timeout_s: float | None,
        head_timeout_s: float | None,
        deadline: float | None,
    ) -> Response:
        """Write `request` (and `body`); return the response once its head has arrived."""
        transport = self.transport
        if transport is None:
            raise self._gone or Disconnected(
                "the worker closed the connection before the request was written"
            )
        now = self.loop.time()
        self._deadline = math.inf if deadline is None else deadline
        if now >= self._deadline:
            raise ReadTimeout("the request's deadline passed before it was sent to the worker")
        self._read_timeout_s = read_timeout_s
        self._head_timeout_s = head_timeout_s
        self._head_by = math.inf if head_timeout_s is None else now + head_timeout_s
        self._header_bytes_left = self._max_header_bytes
        self._headers_left = self._max_headers
        self._raw_head_left = self._max_raw_head_bytes
        self._head = self.loop.create_future()
        self._response = None
        self.received = False
        transport.write(request)
        if body:
            transport.write(body)
        self._waiting += 1  # as reading(), with the one timer set for the earliest bound
        self._last_data = now
        first = min(self._head_by, self._deadline)
        if read_timeout_s is not None and now + read_timeout_s < first:
            first = now + read_timeout_s
        if first < self._timer_at:
            self._arm(first)
        try:
            return await self._head
        finally:
            self._head = None
            self.waited()

    def reading(self) -> None:
        """A task waits for data: from now on, the read timeout counts."""
        self._waiting += 1
        if self._waiting == 1:
            now = self._last_data = self.loop.time()
            timeout_s = self._read_timeout_s
            if timeout_s is not None and now + timeout_s < self._timer_at:
                self._arm(now + timeout_s)

    def waited(self) -> None:
        self._waiting -= 1

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._check_time)
        self._timer_at = at

    def _check_time(self) -> None:
        # The one timer of the exchange: fail it if a bound is passed, else move on to the
        # next instant one could be.
        self._timer = None
        self._timer_at = math.inf
        if self.transport is None:
            return
        now = self.loop.time()
        if now >= self._deadline:
            self._broken(ReadTimeout("the worker's answer ran past the request's deadline"))
            return
        next_at = self._deadline
        if self._head is not None:
            if now >= self._head_by:
                self._broken(
                    ReadTimeout(
                        f"the worker's answer head did not come within {self._head_timeout_s:g}s"
                    )
                )
                return
            next_at = min(next_at, self._head_by)
        timeout_s = self._read_timeout_s
        if timeout_s is not None and self._waiting > 0:
            idle_by = self._last_data + timeout_s
            if now >= idle_by:
                self._broken(ReadTimeout(f"no data from the worker for {timeout_s:g}s"))
                return
            next_at = min(next_at, idle_by)
        if next_at < math.inf:
            self._arm(next_at)

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
            self._timer_at = math.inf
        self._response = None
        self._read_timeout_s = None
        self._head_by = self._deadline = math.inf
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
