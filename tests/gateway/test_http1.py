"""The client the gateway calls workers with, against real sockets speaking raw HTTP/1.1.

Each server here is a few lines of asyncio writing exact bytes, so every case the client must
survive (a keep-alive connection the worker closed, a stall, a cut-off body, garbage) is made
on purpose rather than hoped for.
"""

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.http1 import BadResponse, Client, ConnectFailed, Disconnected, ReadTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = {"Content-Type": "application/json"}


class RawServer:
    """A TCP server answering each request with `answer(request_number)`, counting connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/x?a=1"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self._open:
            writer.close()  # the handler's next read ends: no task is left behind
        await asyncio.wait(self._tasks, timeout=5) if self._tasks else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open.add(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._open.discard(writer)
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


_SERVERS: list[RawServer] = []


@pytest.fixture(autouse=True)
async def stop_servers() -> AsyncIterator[None]:
    yield
    while _SERVERS:
        await _SERVERS.pop().stop()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    http = Client(limit=8, connect_timeout_s=1.0)
    yield http
    await http.close()


async def serve(handler: Handler) -> tuple[RawServer, str]:
    server = RawServer(handler)
    _SERVERS.append(server)
    return server, await server.start()


async def test_keep_alive_reuses_one_connection_and_sends_what_was_asked(client: Client) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(answer(b'{"n":%d}' % len(seen)))

    server, url = await serve(handler)
    for n in (1, 2, 3):
        response = await client.request("POST", url, JSON, b'{"q":1}')
        assert response.status == 200
        assert await response.read() == b'{"n":%d}' % n
        response.release()
    assert server.connections == 1
    first = seen[0].decode()
    assert first.startswith("POST /v1/x?a=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{url.split(':')[2].split('/')[0]}\r\n" in first
    assert "Content-Type: application/json\r\n" in first
    assert first.endswith('Content-Length: 7\r\n\r\n{"q":1}')


async def test_chunked_and_gzip_answers_are_decoded(client: Client) -> None:
    packed = gzip.compress(b'{"answer":"unzipped"}')

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await read_request(reader)
        writer.write(answer(packed, extra=b"Content-Encoding: gzip\r\n"))

    _, url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    pieces = [piece async for piece in response.chunks()]
    assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
    response.release()
    response = await client.request("POST", url, JSON, b"{}")
    assert await response.read() == b'{"answer":"unzipped"}'
    response.release()


async def test_a_keep_alive_connection_closed_by_the_worker_is_replaced(client: Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"ok"))  # says keep-alive, then closes once the answer is out
        await writer.drain()

    server, url = await serve(handler)
    for _ in range(3):
        response = await client.request("POST", url, JSON, b"{}")
        assert await response.read() == b"ok"
        response.release()
        await asyncio.sleep(0.05)  # the close arrives while the connection is idle
    assert server.connections == 3


async def test_stale_connection_detected_only_on_write_is_retried_once(client: Client) -> None:
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await read_request(reader)
        answered += 1
        writer.write(answer(b"ok"))
        await writer.drain()
        await read_request(reader)  # the next request on this connection: drop it unanswered

    server, url = await serve(handler)
    for _ in range(2):
        response = await client.request("POST", url, JSON, b"{}")
        assert await response.read() == b"ok"
        response.release()
    assert answered == 2
    assert server.connections == 2


async def test_nothing_listening_is_a_connect_failure(client: Client) -> None:
    server, url = await serve(read_request)  # type: ignore[arg-type]
    assert server.server is not None
    server.server.close()
    await server.server.wait_closed()
    with pytest.raises(ConnectFailed):
        await client.request("POST", url, JSON, b"{}")


async def test_a_stalled_stream_times_out_and_a_cut_body_is_a_disconnect(client: Client) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await reader.read()  # nothing more, until the client gives up

    _, url = await serve(stall)
    response = await client.request("POST", url, JSON, b"{}", read_timeout_s=0.3)
    pieces = response.chunks()
    assert await anext(pieces) == b"hello"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReadTimeout):
        await anext(pieces)
    assert 0.25 <= loop.time() - started < 2.0
    response.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")

    _, url = await serve(cut)
    response = await client.request("POST", url, JSON, b"{}")
    with pytest.raises(Disconnected):
        await response.read()
    response.close()


async def test_an_answer_without_a_length_ends_where_the_connection_does(client: Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length, then close")
        await writer.drain()

    _, url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    assert await response.read() == b"no length, then close"
    response.release()


async def test_garbage_is_a_bad_response(client: Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    _, url = await serve(handler)
    with pytest.raises(BadResponse):
        await client.request("POST", url, JSON, b"{}")


async def test_a_large_body_read_slowly_arrives_whole(client: Client) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes on the way

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(body))
        await writer.drain()

    _, url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    received = bytearray()
    async for piece in response.chunks():
        received += piece
        await asyncio.sleep(0)
    assert bytes(received) == body
    response = await client.request("POST", url, JSON, b"{}")
    with pytest.raises(ValueError, match="limit"):
        await response.read(limit=1024 * 1024)
    response.close()


async def test_an_unread_answer_closes_its_connection_and_limits_queue_requests() -> None:
    http = Client(limit=1, connect_timeout_s=1.0)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"x" * 10))
            await writer.drain()

    server, url = await serve(handler)
    try:
        response = await http.request("POST", url, JSON, b"{}")
        waiting = asyncio.create_task(http.request("POST", url, JSON, b"{}"))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # one connection allowed, and it is taken
        response.close()  # not read: this connection cannot carry the next request
        second = await asyncio.wait_for(waiting, 2)
        assert await second.read() == b"x" * 10
        second.release()
        assert server.connections == 2
    finally:
        await http.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj"]
    names = ["/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([openssl, *request, *names, *files], check=True, capture_output=True)
    return cert, key


async def test_https_workers_are_verified(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        writer.write(answer(b"over tls: " + request.split(b" ")[1]))
        await writer.drain()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    trusting = Client(ssl_context=ssl.create_default_context(cafile=str(cert)))
    default = Client()  # the system's CAs: this certificate is not among them
    try:
        response = await trusting.request("POST", f"https://localhost:{port}/v1/x", JSON, b"{}")
        assert await response.read() == b"over tls: /v1/x"
        response.release()
        with pytest.raises(ConnectFailed, match="certificate"):
            await default.request("POST", f"https://localhost:{port}/v1/x", JSON, b"{}")
    finally:
        await trusting.close()
        await default.close()
        server.close()


async def test_bytes_on_an_idle_connection_are_not_taken_for_the_next_answer(
    client: Client,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"first"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(answer(b"unasked"))  # nobody asked: must not answer the next request
        await writer.drain()
        while True:
            await read_request(reader)
            writer.write(answer(b"late"))

    server, url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    assert await response.read() == b"first"
    response.release()
    await asyncio.sleep(0.2)
    response = await client.request("POST", url, JSON, b"{}")
    assert await response.read() == b"first"  # from a new connection
    response.release()
    assert server.connections == 2


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()


async def test_a_waiter_cancelled_after_its_wake_up_passes_it_on() -> None:
    http = Client(limit=1, connect_timeout_s=2.0)
    _, url = await serve(keep_answering)
    try:
        first = await http.request("POST", url, JSON, b"{}")
        second = asyncio.create_task(http.request("POST", url, JSON, b"{}"))
        third = asyncio.create_task(http.request("POST", url, JSON, b"{}"))
        await asyncio.sleep(0.05)
        assert await first.read() == b"ok"
        first.release()  # wakes the second request...
        second.cancel()  # ...whose client goes away in the same tick
        response = await asyncio.wait_for(third, 1.5)
        assert await response.read() == b"ok"
        response.release()
    finally:
        await http.close()


async def test_the_per_worker_cap_wakes_a_waiter_of_the_same_worker() -> None:
    http = Client(limit_per_host=1, connect_timeout_s=2.0)
    _, url_x = await serve(keep_answering)
    _, url_y = await serve(keep_answering)
    try:
        held_x = await http.request("POST", url_x, JSON, b"{}")
        held_y = await http.request("POST", url_y, JSON, b"{}")
        waiting_x = asyncio.create_task(http.request("POST", url_x, JSON, b"{}"))
        await asyncio.sleep(0.01)
        waiting_y = asyncio.create_task(http.request("POST", url_y, JSON, b"{}"))
        await asyncio.sleep(0.05)
        assert await held_y.read() == b"ok"
        held_y.release()
        response = await asyncio.wait_for(waiting_y, 1.5)
        assert await response.read() == b"ok"
        response.release()
        assert not waiting_x.done()  # x's only connection is still taken
        held_x.close()
        (await asyncio.wait_for(waiting_x, 1.5)).close()
    finally:
        await http.close()


async def test_a_full_pool_fails_after_the_connect_timeout_not_never() -> None:
    http = Client(limit=1, connect_timeout_s=0.3)
    _, url = await serve(keep_answering)
    try:
        held = await http.request("POST", url, JSON, b"{}")
        with pytest.raises(ConnectFailed, match="no free connection"):
            await http.request("POST", url, JSON, b"{}")
        held.close()
    finally:
        await http.close()


async def test_interim_answers_are_skipped_and_odd_framing_spends_the_connection(
    client: Client,
) -> None:
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while True:
            await read_request(reader)
            answered += 1
            if answered == 1:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + answer(b"real"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")  # nobody asked
            else:
                writer.write(answer(b"good"))
            await writer.drain()

    server, url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    assert (response.status, await response.read()) == (200, b"real")
    response.release()
    response = await client.request("POST", url, JSON, b"{}")
    assert await response.read() == b"good"
    response.release()
    assert server.connections == 2


async def test_an_answer_that_does_not_decompress_is_a_bad_response(client: Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"not gzip at all", extra=b"Content-Encoding: gzip\r\n"))
        await writer.drain()
        await reader.read()

    _, url = await serve(handler)
    response = await client.request("POST", url, JSON, b"{}")
    with pytest.raises(BadResponse, match="does not decompress"):
        await response.read()
    response.close()
