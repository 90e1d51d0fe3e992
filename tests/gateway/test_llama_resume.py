"""Streams resumed on real llama.cpp servers: two llama-servers with the same tiny model.

llama.cpp continues a final assistant message when told `continue_final_message` (the openai
preset's `resume` fields), so at temperature 0 the text after a resume is the text without
one: cut 50 times at random points between the gateway and a server, and once by killing the
server process itself mid-answer, the client's text is the uninterrupted text every time.
"""

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.llama.server import LlamaServer, story_server

MODEL = "tiny-story"
MESSAGES: Any = [{"role": "user", "content": "tell me about the river"}]


class CuttingProxy:
    """A TCP relay in front of a worker that cuts one answer after `cut` SSE events.

    Only a fresh request is cut (one whose body does not say `continue_final_message`), so the
    worker the stream goes on from answers in full. The cut aborts both sockets, as a server
    process that died would leave them.
    """

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.cut: int | None = None  # armed for the next fresh request, then disarmed
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        state: dict[str, Any] = {"cut": None, "events": 0}

        async def to_worker() -> None:
            while data := await reader.read(65536):
                if data.startswith(b"POST "):  # a new request on this connection
                    fresh = b"continue_final_message" not in data
                    state["cut"], state["events"] = (self.cut if fresh else None), 0
                    if fresh:
                        self.cut = None
                up_writer.write(data)
                await up_writer.drain()

        async def to_gateway() -> None:
            while data := await up_reader.read(65536):
                cut = state["cut"]
                if cut is not None:
                    at = _after_events(data, cut - state["events"])
                    if at is not None:
                        writer.write(data[:at])
                        await writer.drain()
                        self.cuts += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    state["events"] += data.count(b"data: ")
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(to_worker()), asyncio.ensure_future(to_gateway())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.transport.abort()
            up_writer.transport.abort()


def _after_events(data: bytes, n: int) -> int | None:
    """Where in `data` the (n+1)th SSE event starts (after n events); None if it has fewer."""
    at = -1
    for _ in range(n + 1):
        at = data.find(b"data: ", at + 1)
        if at < 0:
            return None
    return at


@pytest.fixture
async def proxies(llama_story_pair: list[LlamaServer]) -> AsyncIterator[list[CuttingProxy]]:
    started = []
    for server in llama_story_pair:
        proxy = CuttingProxy(int(server.base_url.rsplit(":", 1)[1]))
        await proxy.start()
        started.append(proxy)
    yield started
    for proxy in started:
        await proxy.stop()


async def register(gateway: Gateway, urls: list[str]) -> None:
    async with gateway.client() as http:
        for url in urls:
            body = {"model_name": MODEL, "preset": "openai", "req_url_template": url}
            body["upstream_model"] = "tiny"
            reply = await http.post("/api/server/register", json=body)
            assert reply.status_code == 200, reply.text
        reply = await http.put(f"/api/server/models/{MODEL}", json={"resume_streams": True})
        assert reply.status_code == 200, reply.text


async def chat(client: openai.AsyncOpenAI, max_tokens: int) -> tuple[str, Any, Any]:
    """Stream an answer at temperature 0; return (text, the gateway's note, usage)."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    text: list[str] = []
    note = usage = None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                note = (chunk.model_extra or {}).get("gateway")
        if chunk.usage is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    return "".join(text), note, usage


async def test_cut_fifty_times_between_two_llama_servers_the_text_is_whole(
    make_gateway: GatewayFactory, proxies: list[CuttingProxy]
) -> None:
    gateway = await make_gateway(eject_after_failures=1000)  # each cut would eject a worker
    await register(gateway, [f"http://127.0.0.1:{p.port}/v1" for p in proxies])
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="x", max_retries=0
    ) as client:
        whole, note, usage = await chat(client, 60)
        assert len(whole) > 30 and note is None
        rng = random.Random(15)
        for attempt in range(50):
            cut = rng.randrange(2, 58)  # SSE events: the role, then one token each
            for proxy in proxies:
                proxy.cut = cut
            text, note, resumed_usage = await chat(client, 60)
            assert text == whole, (attempt, cut)
            assert note == {"resumed": 1}, (attempt, cut)
            # llama.cpp's own counts, moved back by the tokens it was given: as if uncut
            assert resumed_usage == usage, (attempt, cut)
            for proxy in proxies:
                proxy.cut = None
        assert sum(p.cuts for p in proxies) == 50


async def test_a_llama_server_killed_mid_answer_is_resumed_on_the_other(
    make_gateway: GatewayFactory, llama_story_pair: list[LlamaServer], tmp_path: Path
) -> None:
    victim_run = story_server(tmp_path)
    victim = next(victim_run)
    try:
        gateway = await make_gateway()
        # The victim takes the stream (weighted 1000 to 1); the other goes on from it.
        async with gateway.client() as http:
            for url, weight in ((victim.openai_url, 1000), (llama_story_pair[0].openai_url, 1)):
                body = {"model_name": MODEL, "preset": "openai", "req_url_template": url}
                body.update(upstream_model="tiny", weight=weight)
                assert (await http.post("/api/server/register", json=body)).status_code == 200
            settings = {"resume_streams": True, "balancing": "weighted"}
            reply = await http.put(f"/api/server/models/{MODEL}", json=settings)
            assert reply.status_code == 200, reply.text
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key="x", max_retries=0
        ) as client:
            limit = 3000  # about a second of generation: long enough to be killed in
            direct = openai.AsyncOpenAI(base_url=llama_story_pair[0].openai_url, api_key="x")
            async with direct:
                reference = await direct.chat.completions.create(
                    model="tiny", messages=MESSAGES, temperature=0, max_tokens=limit
                )
            whole = reference.choices[0].message.content or ""
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, temperature=0, max_tokens=limit, stream=True
            )
            text: list[str] = []
            note = None
            async for chunk in stream:
                if not chunk.choices:
                    continue
                piece = chunk.choices[0].delta.content or ""
                if piece and len(text) == 1:  # some of the answer is out: the server dies
                    os.kill(victim.pid, signal.SIGKILL)
                text.append(piece)
                if chunk.choices[0].finish_reason:
                    note = (chunk.model_extra or {}).get("gateway")
        assert note == {"resumed": 1}
        assert "".join(text) == whole
    finally:
        victim_run.close()
