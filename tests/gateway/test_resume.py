"""Streams that survive their worker (`resume_streams`): the client's text is whole every time.

The workers are `StoryServer`s (tests/story_server.py): every one gives the same answer to a
question and goes on from a partial one only when asked the way real servers need (vLLM's
`continue_final_message`, a final assistant turn without trailing whitespace for Anthropic),
so a resumed stream that duplicated, dropped or mis-sent text fails here.
"""

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import ollama
import openai
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.model_server import ModelServer
from tests.story_server import StoryServer, story

MODEL = "story"
QUESTION = "tell me about the river"
WHOLE = "".join(story(QUESTION))
TOKENS = len(story(QUESTION))
PROMPT_TOKENS = len(QUESTION.split())


@pytest.fixture
async def servers() -> AsyncIterator[list[StoryServer]]:
    started: list[StoryServer] = []
    yield started
    for server in started:
        await server.stop()


async def fleet(
    gateway: Gateway,
    started: list[StoryServer],
    protocols: tuple[str, ...],
    *,
    timeout_s: float = 30.0,
    weight: int = 1,
    **settings: Any,
) -> list[StoryServer]:
    """Start one StoryServer per protocol as workers of MODEL, which resumes its streams."""
    async with gateway.client() as http:
        for protocol in protocols:
            server = StoryServer(protocol=protocol)
            await server.start()
            started.append(server)
            body = server.registration(MODEL, timeout_s=timeout_s, weight=weight)
            reply = await http.post("/api/server/register", json=body)
            assert reply.status_code == 200, reply.text
        body = {"resume_streams": True, **settings}
        reply = await http.put(f"/api/server/models/{MODEL}", json=body)
        assert reply.status_code == 200, reply.text
    return started


def openai_client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)


async def openai_chat(client: openai.AsyncOpenAI, **extra: Any) -> tuple[str, str | None, Any, Any]:
    """Stream a chat; return (text, finish reason, the last chunk's gateway note, usage)."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    text: list[str] = []
    finish = note = usage = None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
                note = (chunk.model_extra or {}).get("gateway")
        if chunk.usage is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    return "".join(text), finish, note, usage


async def resumes(gateway: Gateway, outcome: str) -> float:
    async with gateway.client() as http:
        scrape = (await http.get("/metrics")).text
    for line in scrape.splitlines():
        if line.startswith("gateway_stream_resumes_total{") and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_the_text_is_whole_after_its_worker_dies_mid_stream_fifty_times(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    # A worker killed fifty times would be ejected; here each kill must be resumed, so the
    # workers stay in rotation.
    gateway = await make_gateway(eject_after_failures=1000)
    await fleet(gateway, servers, ("openai", "openai"))
    rng = random.Random(15)
    async with openai_client(gateway) as client:
        for attempt in range(50):
            cut = rng.randrange(1, TOKENS)
            for server in servers:
                server.breaks = [("die", cut)]  # whichever gets the request dies after `cut` tokens
            text, finish, note, usage = await openai_chat(client)
            assert text == WHOLE, (attempt, cut)
            assert finish == "stop"
            assert note == {"resumed": 1}, (attempt, cut)
            # Counted as one uninterrupted worker would: the same prompt and completion.
            assert usage == (PROMPT_TOKENS, TOKENS), (attempt, cut)
            for server in servers:
                server.breaks.clear()
    continued = [r for s in servers for r in s.received if r["messages"][-1]["role"] == "assistant"]
    assert len(continued) == 50
    assert all(r["continue_final_message"] is True for r in continued)
    assert all(r["add_generation_prompt"] is False for r in continued)
    assert await resumes(gateway, "resumed") == 50


async def test_a_stalled_worker_is_left_and_the_stream_goes_on(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    gateway = await make_gateway()
    await fleet(gateway, servers, ("openai", "openai"), timeout_s=0.5)
    for server in servers:
        server.breaks = [("stall", 9)]
    async with openai_client(gateway) as client:
        text, finish, note, _ = await openai_chat(client)
    assert (text, finish, note) == (WHOLE, "stop", {"resumed": 1})


async def test_without_resume_streams_a_broken_stream_ends_with_an_error(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    gateway = await make_gateway()
    await fleet(gateway, servers, ("openai", "openai"), resume_streams=False)
    for server in servers:
        server.breaks = [("die", 9)]
    async with openai_client(gateway) as client:
        with pytest.raises(openai.APIError, match="stopped mid-answer"):
            await openai_chat(client)
    assert sum(len(s.received) for s in servers) == 1


async def test_max_tokens_counts_what_was_sent_before_the_break(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    gateway = await make_gateway()
    await fleet(gateway, servers, ("openai", "openai"))
    for server in servers:
        server.breaks = [("die", 12)]
    async with openai_client(gateway) as client:
        text, finish, note, usage = await openai_chat(client, max_tokens=20)
    assert text == "".join(story(QUESTION)[:20])
    assert (finish, note, usage) == ("length", {"resumed": 1}, (PROMPT_TOKENS, 20))


async def test_a_stream_is_resumed_as_often_as_resume_tries_allows(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    gateway = await make_gateway()
    await fleet(gateway, servers, ("openai", "openai", "openai"), resume_tries=2)
    shared: list[Any] = [("die", 7), ("die", 7)]  # the first dies at 7, the next 7 tokens later
    for server in servers:
        server.breaks_continuations = True
        server.breaks = shared
    async with openai_client(gateway) as client, gateway.client() as http:
        text, finish, note, usage = await openai_chat(client)
        assert (text, finish, note) == (WHOLE, "stop", {"resumed": 2})
        assert usage == (PROMPT_TOKENS, TOKENS)

        reply = await http.put(f"/api/server/models/{MODEL}", json={"resume_streams": True})
        assert reply.status_code == 200  # resume_tries back to its default...
        reply = await http.put(
            f"/api/server/models/{MODEL}", json={"resume_streams": True, "resume_tries": 1}
        )
        assert reply.status_code == 200  # ... and down to one
        shared.extend([("die", 7), ("die", 7)])
        got: list[str] = []
        with pytest.raises(openai.APIError, match="stopped mid-answer"):
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
            )
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert len("".join(got)) > 0 and WHOLE.startswith("".join(got))
    assert await resumes(gateway, "failed") == 1


async def test_a_tool_call_cut_midway_is_never_resumed(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    gateway = await make_gateway()
    await fleet(gateway, servers, ("openai", "openai"))
    for server in servers:
        server.breaks = [("die", 2)]  # after the call's name and its first argument fragment
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    async with openai_client(gateway) as client:
        with pytest.raises(openai.APIError, match="stopped mid-answer"):
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": QUESTION}],
                tools=[tool],  # type: ignore[list-item]
                stream=True,
            )
            async for _ in stream:
                pass
    assert sum(len(s.received) for s in servers) == 1  # no worker was asked to go on


async def test_only_workers_that_can_continue_are_asked_to(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    gateway = await make_gateway()
    await fleet(gateway, servers, ("openai",), weight=1000, balancing="weighted")
    servers[0].breaks = [("die", 5)]
    template = ModelServer(protocol="template", name="t")
    await template.start()
    try:
        async with gateway.client() as http:
            body = {
                "model_name": MODEL,
                "req_url_template": f"{template.url}/gen",
                "body": {"prompt": "{USER_PROMPT}"},
                "response_extract": "out.text",
                "weight": 1,
            }
            reply = await http.post("/api/server/register", json=body)
            assert reply.status_code == 200, reply.text
        async with openai_client(gateway) as client:
            with pytest.raises(openai.APIError, match="no worker could go on"):
                await openai_chat(client)
        assert template.received == []  # a template has nowhere to put an answer's start
    finally:
        await template.stop()


async def test_resume_settings_are_checked(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    async with gateway.client() as http:
        for settings, says in (
            ({"alias": [{"model": "a"}], "resume_streams": True}, "resume_streams does not apply"),
            ({"resume_streams": True, "resume_tries": 0}, "resume_tries"),
            ({"resume_streams": True, "resume_tries": 9}, "resume_tries"),
            ({"resume_streams": "sometimes"}, "resume_streams"),
        ):
            reply = await http.put(f"/api/server/models/{MODEL}", json=settings)
            assert reply.status_code == 422, (settings, reply.text)
            assert says in reply.json()["msg"], (settings, reply.text)


# Every client protocol, resumed on workers that speak another.


async def via_anthropic(gateway: Gateway) -> tuple[str, Any]:
    text: list[str] = []
    note = None
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="x", max_retries=0) as client:
        stream = await client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
        )
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text.append(event.delta.text)
            elif event.type == "message_delta":
                note = (event.model_extra or {}).get("gateway")
    return "".join(text), note


UNSEEN = object()  # a client whose models drop the fields they do not know


async def via_ollama(gateway: Gateway) -> tuple[str, Any]:
    text: list[str] = []
    async with ollama.AsyncClient(host=gateway.url) as client:
        async for part in await client.chat(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
        ):
            text.append(part.message.content or "")
    return "".join(text), UNSEEN


async def via_ollama_lines(gateway: Gateway) -> tuple[str, Any]:
    """Ollama's NDJSON read line by line, where the last line's note can be seen."""
    text: list[str] = []
    note = None
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}
    async with gateway.client() as http, http.stream("POST", "/api/chat", json=body) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line:
                doc = json.loads(line)
                text.append(doc["message"]["content"])
                if doc["done"]:
                    note = doc.get("gateway")
    return "".join(text), note


async def via_responses(gateway: Gateway) -> tuple[str, Any]:
    text: list[str] = []
    note = None
    async with openai_client(gateway) as client:
        stream = await client.responses.create(model=MODEL, input=QUESTION, stream=True)
        async for event in stream:
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            elif event.type == "response.completed":
                note = (event.model_extra or {}).get("gateway")
    return "".join(text), note


async def via_completions(gateway: Gateway) -> tuple[str, Any]:
    text: list[str] = []
    note = None
    async with openai_client(gateway) as client:
        stream = await client.completions.create(
            model=MODEL, prompt=QUESTION + "\n\n", max_tokens=100, stream=True
        )
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].text)
                if chunk.choices[0].finish_reason:
                    note = (chunk.model_extra or {}).get("gateway")
    return "".join(text), note


CLIENTS = {
    "anthropic": via_anthropic,
    "ollama": via_ollama,
    "ollama-lines": via_ollama_lines,
    "responses": via_responses,
    "completions": via_completions,
}


@pytest.mark.parametrize(
    ("client", "worker"),
    [
        ("anthropic", "openai"),
        ("ollama", "anthropic"),
        ("responses", "ollama"),
        ("completions", "openai"),
        ("anthropic", "anthropic"),
        ("ollama", "ollama"),
        ("ollama-lines", "openai"),
    ],
)
async def test_every_client_protocol_gets_a_whole_text(
    make_gateway: GatewayFactory, servers: list[StoryServer], client: str, worker: str
) -> None:
    gateway = await make_gateway()
    await fleet(gateway, servers, (worker, worker))
    rng = random.Random(client + worker)
    for _ in range(3):
        cut = rng.randrange(1, TOKENS)
        for server in servers:
            server.breaks = [("die", cut)]
        text, note = await CLIENTS[client](gateway)
        assert text == WHOLE, cut
        assert note is UNSEEN or note == {"resumed": 1}, cut
        for server in servers:
            server.breaks.clear()


async def test_a_resumed_stream_is_accounted_once_as_the_client_saw_it(
    make_gateway: GatewayFactory, servers: list[StoryServer]
) -> None:
    gateway = await make_gateway(usage_flush_interval_ms=50)
    await fleet(gateway, servers, ("openai", "openai"))
    for server in servers:
        server.breaks = [("die", 20)]
    async with openai_client(gateway) as client:
        await openai_chat(client)
    async with gateway.client() as http:

        async def totals() -> Any:
            reply = await http.get("/api/server/usage", params={"model": MODEL})
            assert reply.status_code == 200, reply.text
            return reply.json()["total"]

        seen: Any = None
        for _ in range(100):
            seen = await totals()
            if seen.get("requests"):
                break
            await asyncio.sleep(0.05)
    assert seen["requests"] == 1
    assert (seen["prompt_tokens"], seen["completion_tokens"]) == (PROMPT_TOKENS, TOKENS)
