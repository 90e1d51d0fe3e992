"""Limits on what a client sends: header count and size, request line, raw protocol garbage."""

import asyncio

import pytest
from yarl import URL

from tests.conftest import Gateway, GatewayFactory


async def raw_exchange(gateway: Gateway, request: bytes) -> bytes:
    """Send raw bytes; return the status line of the answer (b"" if the server just closed)."""
    url = URL(gateway.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    except ConnectionResetError:
        line = b""
    finally:
        writer.close()
        await writer.wait_closed()
    return line


def status_of(line: bytes) -> int:
    return int(line.split()[1]) if line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


async def test_header_limits_come_from_the_settings(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_headers=20, max_header_bytes=1024, max_request_line_bytes=512)
    async with gateway.client() as http:
        ok = {f"X-H{i}": "v" for i in range(10)}
        assert (await http.get("/healthz", headers=ok)).status_code == 200
        many = {f"X-H{i}": "v" for i in range(40)}
        assert 400 <= (await http.get("/healthz", headers=many)).status_code < 500
        big = {"X-Big": "v" * 2000}
        assert 400 <= (await http.get("/healthz", headers=big)).status_code < 500
        long_url = "/api/server/workers?model_name=" + "a" * 1000
        assert 400 <= (await http.get(long_url)).status_code < 500
        assert (await http.get("/healthz")).status_code == 200


GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/server/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
    b"POST /api/server/register HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /api/server/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: v\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n folded: v\r\n\r\n",
    b"GET \xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello
]


@pytest.mark.parametrize("request_bytes", GARBAGE)
async def test_protocol_garbage_gets_4xx_and_the_gateway_goes_on(
    gateway: Gateway, request_bytes: bytes
) -> None:
    line = await raw_exchange(gateway, request_bytes)
    assert line == b"" or 400 <= status_of(line) < 500, line
    assert (
        status_of(await raw_exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        == 200
    )
