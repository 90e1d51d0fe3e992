"""Streams are passed on as they come, end cleanly when a worker dies, stop when clients go."""

import asyncio

import httpx
import ollama
import openai
import pytest
from aiohttp import web

from gateway.stream import ModelRenaming
from tests.conftest import Gateway, ProtocolWorkerFactory
from tests.gateway.test_openai_api import async_client, preset_registration
from tests.gateway.test_seed_api import register

CHAT = {"messages": [{"role": "user", "content": "one two three four"}], "stream": True}


async def content_lines(reply: httpx.Response) -> list[str]:
    return [line async for line in reply.aiter_lines() if line.startswith("data:")]


async def test_first_chunk_arrives_before_the_worker_has_finished(
    gateway: Gateway, client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    slow = await make_protocol_worker("openai", name="slow", chunk_delay_s=0.3)
    await register(client, preset_registration("slow", slow))
    async with client.stream(
        "POST", "/v1/chat/completions", json={"model": "slow", **CHAT}
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["x-accel-buffering"] == "no"
        lines = reply.aiter_lines()
        first = await anext(lines)
        assert first.startswith("data: ")
        assert not slow.finished.is_set()  # the rest is still being generated
        rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert slow.finished.is_set()


async def test_client_disconnect_closes_the_worker_request(
    gateway: Gateway, client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    for protocol in ("openai", "ollama"):
        worker = await make_protocol_worker(protocol, name=protocol, chunk_delay_s=0.5)
        await register(client, preset_registration(protocol, worker))
        async with client.stream(
            "POST", "/v1/chat/completions", json={"model": protocol, **CHAT}
        ) as reply:
            await anext(reply.aiter_lines())
        # The client has hung up after one chunk; the worker must see its connection closed
        # long before it would have finished (4 more chunks at 0.5 s each).
        await asyncio.wait_for(worker.client_gone.wait(), timeout=1.5)
        assert not worker.finished.is_set()


async def test_worker_death_mid_stream_ends_with_an_error_event(
    gateway: Gateway, client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    dying = await make_protocol_worker("openai", name="dying", die_after=3)
    await register(client, preset_registration("dying", dying))
    async with client.stream(
        "POST", "/v1/chat/completions", json={"model": "dying", **CHAT}
    ) as reply:
        lines = await content_lines(reply)
    assert '"error"' in lines[-2]
    assert lines[-1] == "data: [DONE]"

    async with async_client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="dying", stream=True, **{"messages": CHAT["messages"]}
        )  # type: ignore[call-overload]
        received = []
        with pytest.raises(openai.APIError, match="mid-answer"):
            async for chunk in stream:
                received.append(chunk)
        assert received  # some chunks came before the error


async def test_ollama_worker_death_mid_stream_raises_in_the_ollama_client(
    gateway: Gateway, client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    dying = await make_protocol_worker("ollama", name="dying", die_after=2)
    await register(client, preset_registration("dying", dying))
    sdk = ollama.AsyncClient(host=gateway.url)
    try:
        parts = []
        with pytest.raises(ollama.ResponseError, match="mid-answer"):
            async for part in await sdk.chat(
                model="dying", messages=[{"role": "user", "content": "a b c"}], stream=True
            ):
                parts.append(part.message.content)
        assert parts == ["dying", " says"]
    finally:
        await sdk.close()


async def test_no_retry_once_the_stream_has_begun(
    gateway: Gateway, client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    dying = await make_protocol_worker("openai", name="dying", die_after=2)
    healthy = await make_protocol_worker("openai", name="healthy")
    await register(client, preset_registration("pair", dying))
    await register(client, preset_registration("pair", healthy))
    async with client.stream(
        "POST", "/v1/chat/completions", json={"model": "pair", **CHAT}
    ) as reply:
        lines = await content_lines(reply)
    assert '"error"' in lines[-2]
    assert healthy.count == 0


async def test_failover_happens_before_the_stream_begins(
    gateway: Gateway, client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    broken = await make_protocol_worker("openai", name="broken", status=503)
    healthy = await make_protocol_worker("openai", name="healthy")
    await register(client, preset_registration("pair", broken))
    await register(client, preset_registration("pair", healthy))
    async with async_client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="pair", messages=[{"role": "user", "content": "x"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "healthy says x"
    assert broken.count == 1


async def test_streaming_template_worker_declares_its_format(
    gateway: Gateway, client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    inhouse = await make_protocol_worker("ollama", name="inhouse", chunk_delay_s=0.01)
    template = {
        "model_name": "inhouse",
        "req_url_template": f"{inhouse.url}/api/generate",
        "body": {"model": "x", "prompt": "{USER_PROMPT}", "stream": True},
        "is_stream": True,
        "stream_format": "ndjson",
        "stream_extract": "response",
    }
    missing = await register(client, {**template, "stream_format": None})
    assert missing.status_code == 422
    assert "stream_format" in missing.json()["msg"]
    assert (await register(client, template)).status_code == 200

    async with async_client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="inhouse", messages=[{"role": "user", "content": "a b"}], stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert [p for p in pieces if p] == ["inhouse", " says", " a", " b"]
    # A client that wants one answer gets the stream joined.
    seed = await client.post(
        "/api/v1/chat/completions", json={"input": "a b", "model_name": "inhouse"}
    )
    assert seed.json()["result"] == "inhouse says a b"


async def test_a_slow_client_holds_back_a_fast_worker_and_gets_every_byte(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    # 48 MiB of events, far more than the kernel's socket buffers on the way can hold: if the
    # gateway kept reading the worker while the client reads nothing, the worker would finish.
    event = b"x" * (32 * 1024 - 40)
    count = 1536
    finished = asyncio.Event()

    async def fast(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(count):
            await response.write(b'data: {"i":%d,"pad":"%s"}\n\n' % (i, event))
        await response.write(b"data: [DONE]\n\n")
        finished.set()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", fast)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        body = {"model_name": "fast", "req_url_template": f"http://127.0.0.1:{port}/v1"}
        assert (await register(client, {**body, "preset": "openai"})).status_code == 200
        async with client.stream(
            "POST", "/v1/chat/completions", json={"model": "fast", **CHAT}
        ) as reply:
            await asyncio.sleep(1.0)
            assert not finished.is_set()  # held back: the gateway stopped reading the worker
            seen = 0
            async for line in reply.aiter_lines():
                if line.startswith('data: {"i"'):
                    assert line.startswith(f'data: {{"i":{seen},')
                    assert len(line) == len(event) + len(f'data: {{"i":{seen},"pad":""}}')
                    seen += 1
                elif line:
                    assert line == "data: [DONE]"
        assert seen == count
        assert finished.is_set()
    finally:
        await runner.cleanup()


class Collect:
    def __init__(self) -> None:
        self.out = b""

    def write(self, data: bytes) -> None:
        self.out += data

    def backlog(self) -> int:
        return 0


def test_the_model_is_renamed_in_whole_lines_however_the_bytes_are_cut() -> None:
    stream = (
        b'data: {"id":"1","model":"Qwen/Qwen3-4B","choices":[{"delta":{"content":'
        b'"the \\"model\\":\\"Qwen/Qwen3-4B\\" text stays"}}]}\n\n'
        b'data: {"id":"2", "model": "Qwen/Qwen3-4B"}\n\n'
        b"data: [DONE]\n\n"
    )
    expected = stream.replace(b'"model":"Qwen/Qwen3-4B"', b'"model":"qwen"').replace(
        b'"model": "Qwen/Qwen3-4B"', b'"model": "qwen"'
    )
    assert expected.count(b'"model":"qwen"') == 1  # the escaped one in the text is left alone
    for size in (1, 3, 7, 64, len(stream)):
        sink = Collect()
        renaming = ModelRenaming(sink, "Qwen/Qwen3-4B", b"qwen")
        for start in range(0, len(stream), size):
            renaming.write(stream[start : start + size])
        renaming.flush()
        assert sink.out == expected, size


def test_a_long_unfinished_line_never_counts_as_backlog() -> None:
    sink = Collect()
    renaming = ModelRenaming(sink, "Qwen/Qwen3-4B", b"qwen")
    renaming.write(b'data: {"model":"Qwen/Qwen3-4B","x":"' + b"y" * 300_000)
    assert renaming.backlog() == 0  # held back waiting for its newline, not for the socket
    renaming.write(b'"}\n\n')
    assert sink.out.startswith(b'data: {"model":"qwen","x":"yyy')
    assert sink.out.endswith(b'"}\n\n')
