"""The request path against hostile workers: bounded in size and time, never a 500, no secret out.

Each worker here is a raw socket server (tests/hostile.py) that sends what a broken, slow or
malicious model server might: its own API key echoed back, answers too large, heads that never
finish, streams that never end, a gzip bomb, a protocol banner. The gateway must answer each
with a clean error of the right status in the route family's shape, and keep the worker's
header secrets out of every message, listing and log line.
"""

import asyncio
import gc
import gzip
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.state import ROUTER
from tests.conftest import Gateway, GatewayFactory
from tests.gateway.test_cli import embedded_pids, start
from tests.hostile import RawRequest, RawWorker, leaks

SECRET = "sk-live-7f3a9c2e5b1d4f60a8e9c4d2"
AUTH = f"Bearer {SECRET}"

RawFactory = Callable[..., Awaitable[RawWorker]]


@pytest.fixture
async def make_raw() -> AsyncIterator[RawFactory]:
    workers: list[RawWorker] = []

    async def start(answer: Any, **kwargs: Any) -> RawWorker:
        worker = RawWorker(answer, **kwargs)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop()


def http(status: int, body: bytes, content_type: str = "application/json", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def replying(status: int, body: bytes | Callable[[RawRequest], bytes], **kw: str) -> Any:
    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        data = body(request) if callable(body) else body
        writer.write(http(status, data, **kw))

    return answer


def template(worker: RawWorker, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": "m",
        "req_url_template": f"{worker.url}/gen",
        "body": {"input": "{USER_PROMPT}"},
        "response_extract": "data.text",
        "header": {"Authorization": AUTH},
        "timeout_s": 2,
    }
    body.update(extra)
    return body


async def setup(client: httpx.AsyncClient, registration: dict[str, Any]) -> None:
    reply = await client.post("/api/server/register", json=registration)
    assert reply.status_code == 200, reply.text


async def seed(client: httpx.AsyncClient, text: str = "hi", model: str = "m") -> httpx.Response:
    return await client.post("/api/v1/chat/completions", json={"input": text, "model_name": model})


def echo(prefix: bytes) -> Callable[[RawRequest], bytes]:
    """A body that quotes the Authorization header the worker was sent."""
    return lambda request: prefix + request.headers["authorization"].encode()


# Secrets: a worker that echoes its own Authorization header.


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (replying(200, echo(b"<html>not json "), content_type="text/html"), "not JSON"),
        (replying(200, lambda r: orjson.dumps({r.headers["authorization"]: 1})), "no key"),
        (replying(500, echo(b"x" * 190 + b" bad key ")), "HTTP 500"),
        (replying(401, echo(b'{"error": "key '), content_type="text/plain"), "HTTP 401"),
    ],
    ids=["non-json-200", "extract-miss-keys", "padded-500", "401-echo"],
)
async def test_a_worker_echoing_its_key_never_shows_it(
    make_gateway: GatewayFactory,
    make_raw: RawFactory,
    caplog: pytest.LogCaptureFixture,
    answer: Any,
    says: str,
) -> None:
    gateway = await make_gateway(eject_after_failures=1)
    worker = await make_raw(answer)
    caplog.set_level(logging.INFO)
    async with gateway.client() as client:
        await setup(client, template(worker))
        reply = await seed(client)
        assert reply.status_code == 502
        message = reply.json()["msg"]
        assert says in message and not leaks(message, SECRET), message
        assert worker.received[0].headers["authorization"] == AUTH  # the worker did get it
        listing = (await client.get("/api/server/workers")).json()["data"][0]
        assert listing["stats"]["last_error"] and not leaks(orjson.dumps(listing).decode(), SECRET)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert not leaks(logged, SECRET), logged
    # A 5xx counts toward ejection (its log line quotes the reason); an unreadable answer
    # or a 4xx does not take the worker out.
    assert ("ejected worker" in logged) == (says == "HTTP 500"), logged


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)


async def test_a_streamed_error_event_with_the_key_reaches_no_client(
    client: httpx.AsyncClient, make_raw: RawFactory
) -> None:
    body = lambda r: sse({"text": "hel"}, {"error": f"upstream key {r.headers['authorization']}"})  # noqa: E731
    worker = await make_raw(replying(200, body, content_type="text/event-stream"))
    await setup(
        client,
        template(worker, is_stream=True, stream_format="sse", stream_extract="text"),
    )
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    streamed = await client.post("/v1/chat/completions", json=chat)
    assert streamed.status_code == 200
    assert "hel" in streamed.text and "reported an error" in streamed.text
    assert not leaks(streamed.text, SECRET), streamed.text
    whole = await seed(client)  # the same stream collected for a client that wants it whole
    assert whole.status_code == 502
    assert "reported an error" in whole.json()["msg"]
    assert not leaks(whole.text, SECRET)


async def test_a_passthrough_refusal_is_the_clients_error_without_the_key(
    client: httpx.AsyncClient, make_raw: RawFactory
) -> None:
    refusal = lambda r: orjson.dumps({"error": {"message": f"bad {r.headers['authorization']}"}})  # noqa: E731
    worker = await make_raw(replying(400, refusal))
    registration = {
        "model_name": "m",
        "preset": "openai",
        "req_url_template": f"{worker.url}/v1",
        "header": {"Authorization": AUTH},
    }
    await setup(client, registration)
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    reply = await client.post("/v1/chat/completions", json=chat)
    assert reply.status_code == 400
    assert "refused" in reply.json()["error"]["message"]
    assert not leaks(reply.text, SECRET)


# Size: a whole answer to a streamed request is bounded like any other.


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/api/generate", {"model": "m", "prompt": "x"}, "ollama"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
            "openai",
        ),
    ],
)
async def test_a_too_large_whole_answer_to_a_stream_is_a_502_before_the_stream(
    make_gateway: GatewayFactory, make_raw: RawFactory, path: str, body: Any, shape: str
) -> None:
    gateway = await make_gateway(max_response_bytes=1024 * 1024)
    big = orjson.dumps({"data": {"text": "a" * (3 * 1024 * 1024)}})
    worker = await make_raw(replying(200, big))
    async with gateway.client() as client:
        await setup(client, template(worker))
        reply = await client.post(path, json=body)
    assert reply.status_code == 502
    error = reply.json()["error"]
    message = error if shape == "ollama" else error["message"]
    assert "max_response_bytes" in message


# Time: heads that never finish, streams that never end.


async def trickle_status_line(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    for byte in b"HTTP/1.1 200 OK\r\n" * 100:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.2)


async def continue_forever(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    for _ in range(200):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("answer", [trickle_status_line, continue_forever])
@pytest.mark.parametrize(
    ("stream", "streaming_worker"), [(False, False), (True, False), (True, True)]
)
async def test_a_head_that_never_finishes_is_a_504_within_the_workers_timeout(
    client: httpx.AsyncClient,
    make_raw: RawFactory,
    answer: Any,
    stream: bool,
    streaming_worker: bool,
) -> None:
    worker = await make_raw(answer)
    extra: dict[str, Any] = {"timeout_s": 1}
    if streaming_worker:
        extra.update(is_stream=True, stream_format="sse", stream_extract="text")
    await setup(client, template(worker, **extra))
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    # The client's own 30 s timeout is the hang guard: the worker would go on for 40 s.
    reply = await client.post("/v1/chat/completions", json=chat)
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "upstream_timeout"


async def endless_stream(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
    writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
    for i in range(1000):
        event = b"data: " + orjson.dumps({"text": f"{i} "}) + b"\n\n"
        writer.write(b"%x\r\n%b\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(0.05)


async def test_a_stream_that_never_ends_is_cut_at_stream_timeout_s(
    make_gateway: GatewayFactory, make_raw: RawFactory
) -> None:
    gateway = await make_gateway(stream_timeout_s=1.5)
    worker = await make_raw(endless_stream)
    async with gateway.client() as client:
        await setup(
            client, template(worker, is_stream=True, stream_format="sse", stream_extract="text")
        )
        chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        streamed = await client.post("/v1/chat/completions", json=chat)  # 50 s uncut
        assert streamed.status_code == 200
        events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        error = orjson.loads(events[-2].removeprefix("data: "))
        assert error["error"]["code"] == "upstream_error"
        assert "time limit" in error["error"]["message"]
        assert len(events) < 500  # cut long before the worker's 1000 events
        whole = await seed(client)  # collected for a whole answer: the same deadline, a 504
        assert whole.status_code == 504


# What a worker sends that no parser should swallow.


async def header_bomb(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for _ in range(64):
        writer.write(b"a" * 65536)
        await writer.drain()
    writer.write(b"\r\nContent-Length: 2\r\n\r\n{}")


def gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


async def test_header_and_gzip_bombs_are_502s(
    make_gateway: GatewayFactory, make_raw: RawFactory
) -> None:
    gateway = await make_gateway(max_response_bytes=1024 * 1024)
    bomb = gzip_bomb()
    async with gateway.client() as client:
        for model, answer in (
            ("headers", header_bomb),
            ("gzip", replying(200, bomb, Content_Encoding="gzip")),
        ):
            worker = await make_raw(answer)
            await setup(client, template(worker, model_name=model))
            reply = await seed(client, model=model)
            assert reply.status_code == 502, reply.text
            assert (await client.get("/healthz")).status_code == 200


async def test_an_unterminated_stream_line_is_refused_at_its_limit(
    make_gateway: GatewayFactory, make_raw: RawFactory
) -> None:
    gateway = await make_gateway(max_stream_line_bytes=64 * 1024)
    line = b"data: " + b"a" * (1024 * 1024)  # never ends
    worker = await make_raw(replying(200, line, content_type="text/event-stream"))
    async with gateway.client() as client:
        await setup(
            client, template(worker, is_stream=True, stream_format="sse", stream_extract="text")
        )
        whole = await seed(client)
        assert whole.status_code == 502
        assert "65536" in whole.json()["msg"] or "64 KiB" in whole.json()["msg"]


def nested(depth: int) -> bytes:
    return b'{"data": {"text": ' + b"[" * depth + b"]" * depth + b"}}"


async def test_deep_values_and_banners_are_502s_not_500s(
    client: httpx.AsyncClient, make_raw: RawFactory
) -> None:
    deep = await make_raw(replying(200, nested(300)))
    await setup(client, template(deep))
    reply = await seed(client)
    assert reply.status_code == 502, reply.text

    async def silent(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    banner = await make_raw(silent, greeting=b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    await setup(client, template(banner, model_name="ssh"))
    reply = await seed(client, model="ssh")
    assert reply.status_code == 502, reply.text


async def test_a_costly_jsonpath_on_a_large_answer_still_answers(
    client: httpx.AsyncClient, make_raw: RawFactory
) -> None:
    rows = [{"id": i, "note": "n" * 40} for i in range(40_000)]
    doc = orjson.dumps({"rows": rows, "out": {"answer": "found it"}})
    worker = await make_raw(replying(200, doc))
    await setup(client, template(worker, response_extract="$..answer"))
    reply = await seed(client)
    assert reply.status_code in (200, 502), reply.text
    if reply.status_code == 200:
        assert reply.json()["result"] == "found it"
    else:
        assert "response_extract" in reply.json()["msg"]


# Placeholders in URLs.


async def test_dot_segments_in_a_prompt_do_not_walk_up_the_workers_path(
    client: httpx.AsyncClient, make_raw: RawFactory
) -> None:
    worker = await make_raw(replying(200, orjson.dumps({"data": {"text": "ok"}})))
    registration = template(
        worker, req_type="GET", req_url_template=f"{worker.url}/api/{{USER_PROMPT}}/run", body=None
    )
    await setup(client, registration)
    for prompt in ("..", "."):
        assert (await seed(client, prompt)).status_code == 200
    assert [r.target for r in worker.received] == ["/api/%2E%2E/run", "/api/%2E/run"]


async def test_model_name_in_a_preset_url_is_filled_in_on_passthrough(
    client: httpx.AsyncClient, make_raw: RawFactory
) -> None:
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    worker = await make_raw(replying(200, orjson.dumps({**answer, "model": "real"})))
    registration = {
        "model_name": "m",
        "preset": "openai",
        "req_url_template": f"{worker.url}/models/{{MODEL_NAME}}/v1",
        "upstream_model": "real",
    }
    await setup(client, registration)
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    reply = await client.post("/v1/chat/completions", json=chat)
    assert reply.status_code == 200 and reply.json()["model"] == "m"
    translated = await seed(client)
    assert translated.status_code == 200 and translated.json()["result"] == "ok"
    assert [r.target for r in worker.received] == ["/models/real/v1/chat/completions"] * 2


# Balancing and the view.


async def test_embeddings_are_balanced_over_the_pool(
    client: httpx.AsyncClient, make_raw: RawFactory
) -> None:
    vector = orjson.dumps({"object": "list", "data": [{"index": 0, "embedding": [1.0]}]})
    workers = [await make_raw(replying(200, vector)) for _ in range(2)]
    for worker in workers:
        await setup(
            client, {"model_name": "e", "preset": "openai", "req_url_template": f"{worker.url}/v1"}
        )
    for _ in range(4):
        reply = await client.post("/v1/embeddings", json={"model": "e", "input": "x"})
        assert reply.status_code == 200
    assert [len(w.received) for w in workers] == [2, 2]


async def test_a_resync_does_not_freeze_the_collector_again(gateway: Gateway) -> None:
    router = gateway.app[ROUTER]
    frozen = gc.get_freeze_count()
    for _ in range(3):
        router.load(router.version, list(w.record for w in router.workers()), {})
    assert gc.get_freeze_count() == frozen


# Memory: a served gateway process, and an answer far larger than its limit.


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def huge_answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    """300 MB of one JSON answer, written as it is made (the worker holds 1 MiB at a time)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"a" * (1024 * 1024)
    for part in [b'{"data": {"text": "', *([piece] * 300), b'"}}']:
        writer.write(b"%x\r\n%b\r\n" % (len(part), part))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


@pytest.mark.slow
async def test_a_300_mb_whole_answer_to_a_stream_keeps_memory_bounded(
    make_raw: RawFactory, tmp_path: Path
) -> None:
    worker = await make_raw(huge_answer)
    data_dir = tmp_path / "d"
    served = await asyncio.to_thread(start, data_dir, tmp_path)
    try:
        pid = served.process.pid
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
            await setup(client, template(worker, timeout_s=60))
            for _ in range(3):  # warm: imports, pools and buffers in place
                assert (await client.get("/healthz")).status_code == 200
            resting = _rss_kib(pid, "VmRSS")
            for path, body in (
                ("/api/generate", {"model": "m", "prompt": "x"}),
                ("/api/v1/chat/completions", {"input": "x", "model_name": "m"}),
            ):
                reply = await client.post(path, json=body)
                assert reply.status_code == 502, reply.text[:300]
                assert "max_response_bytes" in reply.text
            peak = _rss_kib(pid, "VmHWM")
        assert peak < 2 * resting, (resting, peak)
    finally:
        served.process.terminate()
        await asyncio.to_thread(served.process.wait, 20)
        for leftover in embedded_pids(data_dir):
            os.kill(leftover, signal.SIGKILL)
