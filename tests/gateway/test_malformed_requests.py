"""A malformed request is logged as one line without its bytes: no secret reaches the log."""

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from yarl import URL

from gateway.cli import MalformedRequestFilter, quiet_malformed_requests
from tests.conftest import GatewayFactory
from tests.gateway.test_cli import start

SECRET = "sk-secret-0123456789"

MALFORMED = {
    "header": b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + SECRET.encode()
    + b"\x01\r\n\r\n",
    "target": b"GET /" + SECRET.encode() + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    "too-long": b"GET / HTTP/1.1\r\nHost: x\r\nX-Key: " + SECRET.encode() * 500 + b"\r\n\r\n",
    "method": SECRET.encode() + b"\x01 / HTTP/1.1\r\n\r\n",
}


async def send_raw(url: str, raw: bytes) -> bytes:
    """Send `raw` on a fresh connection; return what the gateway answers before closing."""
    target = URL(url)
    assert target.host is not None and target.port is not None
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


@pytest.fixture
def quiet_log() -> Iterator[None]:
    """Install the filter `serve()` installs, and take it off afterwards."""
    quiet_malformed_requests()
    quiet_malformed_requests()  # twice: installed once
    server = logging.getLogger("aiohttp.server")
    filters = [f for f in server.filters if isinstance(f, MalformedRequestFilter)]
    assert len(filters) == 1
    yield
    server.removeFilter(filters[0])


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_is_logged_without_its_bytes(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, quiet_log: None, raw: bytes
) -> None:
    gateway = await make_gateway()
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    answer = await send_raw(gateway.url, raw)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert SECRET not in caplog.text
    lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(lines) == 1
    (line,) = lines
    assert line.getMessage().startswith("malformed request from 127.0.0.1: ")
    assert line.levelno <= logging.INFO and line.exc_info is None


async def test_a_malformed_body_is_logged_without_a_traceback(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, quiet_log: None
) -> None:
    gateway = await make_gateway()
    raw = (
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20\r\n"
        b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n\r\n" + SECRET.encode()
    )
    await send_raw(gateway.url, raw)
    deadline = time.monotonic() + 10
    while not [r for r in caplog.records if r.name == "aiohttp.server"]:
        assert time.monotonic() < deadline, "aiohttp logged nothing"
        await asyncio.sleep(0.02)
    (line,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert line.getMessage() == (
        "malformed request from an unknown peer: Can not decode content-encoding "
        "(ContentEncodingError)"
    )
    assert line.exc_info is None and SECRET not in caplog.text


async def test_other_server_errors_are_logged_as_before(
    caplog: pytest.LogCaptureFixture, quiet_log: None
) -> None:
    try:
        raise RuntimeError("a bug in a handler")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "peer")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "a bug in a handler" in caplog.text


@pytest.mark.slow
def test_serve_keeps_malformed_request_bytes_out_of_its_log(tmp_path: Path) -> None:
    served = start(tmp_path / "data", tmp_path)
    try:
        answer = asyncio.run(send_raw(served.url, MALFORMED["header"]))
        assert b" 400 " in answer.split(b"\r\n")[0]
        deadline = time.monotonic() + 10
        while "malformed request from" not in served.log.read_text():
            assert time.monotonic() < deadline, served.log.read_text()
            time.sleep(0.05)
    finally:
        served.process.terminate()
        served.process.wait(timeout=20)
    log = served.log.read_text()
    assert SECRET not in log
    assert "INFO aiohttp.server: malformed request from 127.0.0.1: Invalid header value char" in log
