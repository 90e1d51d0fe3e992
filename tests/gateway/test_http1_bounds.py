"""Everything a worker sends is bounded: head size, head time, deadline, inflated bytes.

Each worker here misbehaves on purpose over a raw socket (endless headers, a trickled status
line, interim answers forever, gzip bombs, a banner before the request), and each test checks
what the caller sees: an `HTTPClientError` of the right kind, a closed connection, a pool
that still serves the next request.
"""

import asyncio
import socket
import threading
import zlib
from collections.abc import AsyncIterator

import pytest
import uvloop

from gateway.http1 import (
    BadResponse,
    Client,
    Disconnected,
    HTTPClientError,
    ReadTimeout,
    TooLarge,
)
from tests.gateway.test_http1 import (
    JSON,
    Handler,
    RawServer,
    answer,
    keep_answering,
    read_request,
)

_SERVERS: list[RawServer] = []
KIB = 1024
MIB = 1024 * KIB


@pytest.fixture(autouse=True)
async def stop_servers() -> AsyncIterator[None]:
    yield
    while _SERVERS:
        await _SERVERS.pop().stop()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    http = Client(
        limit=1,  # one connection: a connection not given back would block the next request
        connect_timeout_s=1.0,
        max_header_bytes=64 * KIB,
        max_headers=100,
        max_body_bytes=1 * MIB,
    )
    yield http
    await http.close()


async def serve(handler: Handler) -> str:
    server = RawServer(handler)
    _SERVERS.append(server)
    return await server.start()


async def still_serves(client: Client) -> None:
    """The client's only connection place is free again: a good worker gets the next call."""

    async def good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"fine"))
        await writer.drain()
        await reader.read()

    url = await serve(good)
    response = await asyncio.wait_for(client.request("POST", url, JSON, b"{}"), 5)
    assert await response.read() == b"fine"
    response.release()


async def write_until_closed(
    writer: asyncio.StreamWriter,
    piece: bytes,
    closed: asyncio.Event,
    *,
    limit: int = 64 * MIB,
    pause_s: float = 0.0,
) -> None:
    """Write `piece` again and again; set `closed` once the client has hung up."""
    sent = 0
    try:
        while sent < limit:
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
    except ConnectionError:
        closed.set()


def gzipped_zeros(size: int) -> bytes:
    """A gzip bomb: `size` zero bytes in about size/1000 bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    parts = [packer.compress(zeros) for _ in range(size // MIB)]
    return b"".join([*parts, packer.flush()])


# Head size


async def test_an_endless_header_is_cut_off_at_the_header_limit(client: Client) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        await write_until_closed(writer, b"a" * 65536, closed, limit=16 * MIB)
        writer.write(b"\r\nContent-Length: 2\r\n\r\nok")  # reached only if nobody hung up
        await writer.drain()
        await reader.read()

    url = await serve(handler)
    with pytest.raises(BadResponse, match="headers are over 65536 bytes"):
        await client.request("POST", url, JSON, b"{}")
    await asyncio.wait_for(closed.wait(), 5)  # the client hung up, it did not read on
    await still_serves(client)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (b"X-N: v\r\n" * 101, "over 100 headers"),
        (b"X-Pad: " + b"p" * 1000 + b"\r\n", "over 65536 bytes"),  # 70 x 1 KB, one by one
    ],
    ids=["count", "bytes"],
)
async def test_too_many_or_too_large_headers_are_a_bad_response(
    client: Client, headers: bytes, message: str
) -> None:
    if b"X-Pad" in headers:
        headers *= 70

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    url = await serve(handler)
    with pytest.raises(BadResponse, match=message):
        await client.request("POST", url, JSON, b"{}")
    await still_serves(client)


async def test_a_head_just_under_the_limits_is_accepted_on_every_exchange(
    client: Client,
) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (n, b"v" * 600) for n in range(98))  # ~60 KB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()

    server = RawServer(handler)
    _SERVERS.append(server)
    url = await server.start()
    for _ in range(3):  # the budget is per exchange, not per connection
        response = await client.request("POST", url, JSON, b"{}")
        assert response.headers["x-h97"] == "v" * 600
        assert await response.read() == b"ok"
        response.release()
    assert server.connections == 1


async def test_an_endless_status_line_is_a_bad_response(client: Client) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 ")
        await write_until_closed(writer, b"O" * 65536, closed, limit=16 * MIB)
        writer.write(b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    url = await serve(handler)
    with pytest.raises(BadResponse, match="over 65536 bytes"):
        await client.request("POST", url, JSON, b"{}")
    await asyncio.wait_for(closed.wait(), 5)


async def test_interim_answers_spend_the_same_header_budget(client: Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000)  # 500 KB of interim answers
        writer.write(answer(b"late"))
        await writer.drain()
        await reader.read()

    url = await serve(handler)
    with pytest.raises(BadResponse, match="over 65536 bytes"):
        await client.request("POST", url, JSON, b"{}")
    await still_serves(client)


# Time


async def test_a_trickled_status_line_fails_at_the_head_timeout(client: Client) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 ")
        # One byte every 20 ms: never idle for the read timeout, never a complete head.
        await write_until_closed(writer, b"O", closed, limit=10_000, pause_s=0.02)

    url = await serve(handler)
    with pytest.raises(ReadTimeout, match="head"):
        await asyncio.wait_for(
            client.request("POST", url, JSON, b"{}", read_timeout_s=1.0, head_timeout_s=0.3), 20
        )
    await asyncio.wait_for(closed.wait(), 5)
    await still_serves(client)


async def test_interim_answers_do_not_reset_the_head_timeout(client: Client) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await write_until_closed(
            writer, b"HTTP/1.1 100 Continue\r\n\r\n", closed, limit=10_000, pause_s=0.05
        )

    url = await serve(handler)
    with pytest.raises(ReadTimeout, match="head"):
        await asyncio.wait_for(
            client.request("POST", url, JSON, b"{}", read_timeout_s=1.0, head_timeout_s=0.3), 20
        )
    await asyncio.wait_for(closed.wait(), 5)
    await still_serves(client)


async def test_the_deadline_ends_the_wait_for_a_head(client: Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers

    url = await serve(handler)
    deadline = asyncio.get_running_loop().time() + 0.3
    with pytest.raises(ReadTimeout, match="deadline"):
        await asyncio.wait_for(client.request("POST", url, JSON, b"{}", deadline=deadline), 20)
    await still_serves(client)


async def chunks_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(2000):  # a chunk every 10 ms: never idle, never done
        writer.write(b"7\r\ndata: x\r\n")
        await writer.drain()
        await asyncio.sleep(0.01)


async def test_the_deadline_ends_a_stream_that_never_stops(client: Client) -> None:
    url = await serve(chunks_forever)
    deadline = asyncio.get_running_loop().time() + 0.4
    response = await client.request(
        "POST", url, JSON, b"{}", read_timeout_s=1.0, head_timeout_s=1.0, deadline=deadline
    )
    pieces = 0

    async def consume() -> None:
        nonlocal pieces
        async for _ in response.chunks():
            pieces += 1

    with pytest.raises(ReadTimeout, match="deadline"):
        await asyncio.wait_for(consume(), 20)
    assert pieces > 0  # the stream did flow until the deadline
    response.close()
    await still_serves(client)


async def test_the_deadline_closes_an_answer_nobody_reads(client: Client) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await write_until_closed(writer, b"7\r\ndata: x\r\n", closed, pause_s=0.01)

    url = await serve(handler)
    deadline = asyncio.get_running_loop().time() + 0.3
    response = await client.request("POST", url, JSON, b"{}", deadline=deadline)
    await asyncio.wait_for(closed.wait(), 10)  # held, never read: closed at the deadline
    with pytest.raises(ReadTimeout, match="deadline"):
        await anext(response.chunks())  # the reason, not the disconnect that followed
    response.close()
    await still_serves(client)


class SlowSink:
    """A consumer socket that sends `rate` bytes every 5 ms; remembers its largest backlog."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.pending = 0
        self.received = 0
        self.largest_write = 0
        self.largest_backlog = 0
        self._task = asyncio.create_task(self._send())

    def write(self, data: bytes) -> None:
        self.pending += len(data)
        self.received += len(data)
        self.largest_write = max(self.largest_write, len(data))
        self.largest_backlog = max(self.largest_backlog, self.pending)

    def backlog(self) -> int:
        return self.pending

    async def _send(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self.pending = max(0, self.pending - self.rate)

    def stop(self) -> None:
        self._task.cancel()


async def test_the_deadline_ends_a_forwarded_stream(client: Client) -> None:
    url = await serve(chunks_forever)
    deadline = asyncio.get_running_loop().time() + 0.4
    response = await client.request("POST", url, JSON, b"{}", read_timeout_s=1.0, deadline=deadline)
    sink = SlowSink(rate=MIB)
    try:
        with pytest.raises(ReadTimeout, match="deadline"):
            await asyncio.wait_for(response.forward(sink), 20)
    finally:
        sink.stop()
    assert sink.received > 0
    response.close()
    await still_serves(client)


# Inflated bytes


def gzip_answer(packed: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(packed, extra=b"Content-Encoding: gzip\r\n"))
        await writer.drain()
        await reader.read()

    return handler


async def test_a_gzip_bomb_read_whole_stops_at_the_body_cap(client: Client) -> None:
    url = await serve(gzip_answer(gzipped_zeros(64 * MIB)))
    response = await client.request("POST", url, JSON, b"{}")
    with pytest.raises(TooLarge, match="1048576-byte limit"):
        await response.read()  # the client's max_body_bytes, on inflated bytes
    response.close()
    await still_serves(client)


async def test_read_past_its_limit_is_too_large_and_stops_reading(client: Client) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await write_until_closed(writer, b"10000\r\n" + b"z" * 65536 + b"\r\n", closed)

    url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    with pytest.raises(TooLarge) as raised:
        await response.read(limit=200 * KIB)
    assert isinstance(raised.value, HTTPClientError)
    await asyncio.wait_for(closed.wait(), 5)  # the connection is closed: no more is read
    with pytest.raises(HTTPClientError):
        await response.read()  # nothing more is handed out either
    response.close()
    await still_serves(client)


async def test_a_gzip_bomb_streamed_comes_in_bounded_pieces(client: Client) -> None:
    size = 32 * MIB  # over the body cap: a stream may be long, it is only cut in pieces
    url = await serve(gzip_answer(gzipped_zeros(size)))
    response = await client.request("POST", url, JSON, b"{}")
    largest = total = 0
    async for piece in response.chunks():
        assert not piece.strip(b"\0")
        largest = max(largest, len(piece))
        total += len(piece)
    response.release()
    assert total == size
    assert largest <= 256 * KIB


async def test_a_gzip_bomb_forwarded_waits_for_a_slow_consumer(client: Client) -> None:
    size = 32 * MIB
    url = await serve(gzip_answer(gzipped_zeros(size)))
    response = await client.request("POST", url, JSON, b"{}")
    sink = SlowSink(rate=4 * MIB)
    try:
        await asyncio.wait_for(response.forward(sink), 20)
    finally:
        sink.stop()
    response.release()
    assert sink.received == size
    assert sink.largest_write <= 256 * KIB
    assert sink.largest_backlog <= 1 * MIB  # inflating waited for the consumer to catch up
    await still_serves(client)


# A worker that talks first


class BannerServer:
    """A server in its own thread that greets each connection at once, as sshd does.

    Its greeting is on the wire before the client's event loop has run the request: the
    case a server in the same loop cannot make.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/x"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            self.accepted.append(conn)

    def stop(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread (Linux)
        self.listener.close()
        self._thread.join(5)  # first: the thread may be about to keep one more connection
        for conn in self.accepted:
            conn.close()


async def fail_twenty_times_then_serve(url: str) -> list[BaseException]:
    server = RawServer(keep_answering)
    good = await server.start()
    http = Client(limit=1, connect_timeout_s=1.0)
    errors: list[BaseException] = []
    try:
        for _ in range(20):
            try:
                await asyncio.wait_for(http.request("POST", url, JSON, b"{}"), 5)
            except BaseException as exc:  # which kind it is, is what the test checks
                errors.append(exc)
        response = await asyncio.wait_for(http.request("POST", good, JSON, b"{}"), 5)
        assert await response.read() == b"ok"  # the only connection place was given back
        response.release()
    finally:
        await http.close()
        await server.stop()
    return errors


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_worker_that_talks_before_the_request_is_a_client_error(loop: str) -> None:
    # Not an async test: each loop kind is run here, uvloop as the gateway runs (it delivers
    # the greeting before the request is written, where asyncio happens not to).
    banner = BannerServer()
    try:
        scenario = fail_twenty_times_then_serve(banner.url)
        errors = uvloop.run(scenario) if loop == "uvloop" else asyncio.run(scenario)
    finally:
        banner.stop()
    assert len(errors) == 20
    for error in errors:
        assert isinstance(error, BadResponse), repr(error)


async def test_a_stale_retry_onto_a_worker_that_hangs_up_at_once_ends(client: Client) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections > 1:
            return  # every later connection: closed at once, before any request is read
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()
        await read_request(reader)  # then drop the kept-alive connection unanswered

    url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    assert await response.read() == b"ok"
    response.release()
    with pytest.raises((Disconnected, BadResponse)):
        await asyncio.wait_for(client.request("POST", url, JSON, b"{}"), 5)
    assert connections == 2  # one retry on a new connection, not more
    await still_serves(client)
