"""The fidelity matrix: every inbound route x every worker kind x whole / streamed.

Each worker kind (an OpenAI-compatible server, Ollama, a seed-style template service, the
same streaming) is a real HTTP server keeping a model server's rules (tests/model_server.py):
`max_tokens` cuts the answer with finish reason "length", usage counts what was asked and
answered. Each route is called with its official client where one exists. What a user must
see on every cell: the same text, the assistant role first on a stream, "length" kept as
"length", and the worker's own token counts.
"""

import base64
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest

from tests.conftest import Gateway
from tests.model_server import TOOL_ARGUMENTS, ModelServer, answer_words

PROMPT = "tell me a story"
PROMPT_TOKENS = 4  # the fake counts words

TEMPLATE_BODY = {"ask": "{USER_PROMPT}", "limit": "{MAX_TOKENS}", "stream": "{STREAM}"}
KINDS = ("openai", "ollama", "template", "template-stream")


def registration(kind: str, server: ModelServer) -> dict[str, Any]:
    if kind in ("openai", "ollama", "anthropic"):
        return {"model_name": kind, "req_url_template": server.base_url, "preset": kind}
    streams = kind == "template-stream"
    body: dict[str, Any] = {
        "model_name": kind,
        "req_url_template": f"{server.url}/gen",
        "body": TEMPLATE_BODY,
        "response_extract": "out.text",
        "finish_reason_extract": "stop" if streams else "out.stop",
        "usage_extract": {
            "prompt_tokens": "tokens.in" if streams else "out.tokens.in",
            "completion_tokens": "tokens.out" if streams else "out.tokens.out",
        },
    }
    if streams:
        body.update(is_stream=True, stream_format="sse", stream_extract="t")
    return body


async def start_fleet(gateway: Gateway, kinds: tuple[str, ...]) -> dict[str, ModelServer]:
    """Start one fake model server per worker kind and register it as model `kind`."""
    servers = {}
    async with gateway.client() as client:
        for kind in kinds:
            server = ModelServer(protocol=kind.split("-")[0], name=kind)
            await server.start()
            servers[kind] = server
            reply = await client.post("/api/server/register", json=registration(kind, server))
            assert reply.status_code == 200, reply.text
    return servers


@pytest.fixture
async def fleet(gateway: Gateway) -> AsyncIterator[dict[str, ModelServer]]:
    servers = await start_fleet(gateway, KINDS)
    yield servers
    for server in servers.values():
        await server.stop()


@dataclass
class Clients:
    """The official clients, pointed at the gateway."""

    openai: openai.AsyncOpenAI
    ollama: ollama.AsyncClient
    http: httpx.AsyncClient


@pytest.fixture
async def clients(gateway: Gateway) -> AsyncIterator[Clients]:
    async with (  # each closed even if another's closing fails
        openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0) as oai,
        ollama.AsyncClient(host=gateway.url) as oll,
        gateway.client() as http,
    ):
        yield Clients(oai, oll, http)


@dataclass
class Seen:
    """What a client got, in the route's own words turned into ours."""

    text: str
    finish: str | None  # "stop" / "length" (Ollama's done_reason, OpenAI's finish_reason)
    usage: tuple[int, int] | None  # (prompt, completion)
    role_first: bool = True  # a stream's first delta said role "assistant"


async def openai_chat(c: Clients, model: str, limit: int | None, stream: bool) -> Seen:
    client = c.openai
    messages: Any = [{"role": "user", "content": PROMPT}]
    extra: dict[str, Any] = {"max_tokens": limit} if limit else {}
    if not stream:
        done = await client.chat.completions.create(model=model, messages=messages, **extra)
        assert done.choices[0].message.role == "assistant"
        usage = (done.usage.prompt_tokens, done.usage.completion_tokens) if done.usage else None
        choice = done.choices[0]
        return Seen(choice.message.content or "", choice.finish_reason, usage)
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
    ]
    with_choices = [c for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    usage = next(
        ((c.usage.prompt_tokens, c.usage.completion_tokens) for c in chunks if c.usage), None
    )
    return Seen(
        "".join(c.choices[0].delta.content or "" for c in with_choices),
        finishes[-1] if finishes else None,
        usage,
        role_first=with_choices[0].choices[0].delta.role == "assistant",
    )


async def openai_completions(c: Clients, model: str, limit: int | None, stream: bool) -> Seen:
    client = c.openai
    extra: dict[str, Any] = {"max_tokens": limit} if limit else {}
    if not stream:
        done = await client.completions.create(model=model, prompt=PROMPT, **extra)
        usage = (done.usage.prompt_tokens, done.usage.completion_tokens) if done.usage else None
        return Seen(done.choices[0].text, done.choices[0].finish_reason, usage)
    chunks = [
        c
        async for c in await client.completions.create(
            model=model, prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **extra
        )
    ]
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = next(
        ((c.usage.prompt_tokens, c.usage.completion_tokens) for c in chunks if c.usage), None
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    return Seen(text, finishes[-1] if finishes else None, usage)


def _ollama_usage(part: Any) -> tuple[int, int] | None:
    if part.prompt_eval_count is None and part.eval_count is None:
        return None
    return (part.prompt_eval_count or 0, part.eval_count or 0)


async def ollama_chat(c: Clients, model: str, limit: int | None, stream: bool) -> Seen:
    client = c.ollama
    options = {"num_predict": limit} if limit else None
    messages = [{"role": "user", "content": PROMPT}]
    if not stream:
        done = await client.chat(model=model, messages=messages, options=options)
        assert done.message.role == "assistant"
        return Seen(done.message.content or "", done.done_reason, _ollama_usage(done))
    parts = [
        p
        async for p in await client.chat(
            model=model, messages=messages, options=options, stream=True
        )
    ]
    last = parts[-1]
    assert last.done and all(not p.done for p in parts[:-1])
    assert [p.created_at for p in parts] == sorted(
        p.created_at for p in parts
    )  # never back in time
    return Seen(
        "".join(p.message.content or "" for p in parts), last.done_reason, _ollama_usage(last)
    )


async def ollama_generate(c: Clients, model: str, limit: int | None, stream: bool) -> Seen:
    client = c.ollama
    options = {"num_predict": limit} if limit else None
    if not stream:
        done = await client.generate(model=model, prompt=PROMPT, options=options)
        return Seen(done.response, done.done_reason, _ollama_usage(done))
    parts = [
        p
        async for p in await client.generate(
            model=model, prompt=PROMPT, options=options, stream=True
        )
    ]
    last = parts[-1]
    return Seen("".join(p.response for p in parts), last.done_reason, _ollama_usage(last))


async def seed(c: Clients, model: str, limit: int | None, stream: bool) -> Seen:
    reply = await c.http.post(
        "/api/v1/chat/completions", json={"input": PROMPT, "model_name": model}
    )
    assert reply.status_code == 200, reply.text
    return Seen(reply.json()["result"], None, None)


ROUTES = {
    "openai-chat": openai_chat,
    "openai-completions": openai_completions,
    "ollama-chat": ollama_chat,
    "ollama-generate": ollama_generate,
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", list(ROUTES))
async def test_text_finish_reason_and_usage_survive_translation(
    clients: Clients, fleet: dict[str, ModelServer], route: str, kind: str, stream: bool
) -> None:
    call = ROUTES[route]
    words = answer_words(kind, PROMPT)

    cut = await call(clients, kind, 3, stream)
    assert cut.text == "".join(words[:3])
    assert cut.finish == "length"
    assert cut.usage == (PROMPT_TOKENS, 3)
    assert cut.role_first

    whole = await call(clients, kind, None, stream)
    assert whole.text == "".join(words)
    assert whole.finish == "stop"
    assert whole.usage == (PROMPT_TOKENS, len(words))


@pytest.mark.parametrize("kind", KINDS)
async def test_the_seed_route_answers_from_every_kind(
    clients: Clients, fleet: dict[str, ModelServer], kind: str
) -> None:
    assert (await seed(clients, kind, None, False)).text == "".join(answer_words(kind, PROMPT))


async def test_a_worker_without_usage_paths_gives_no_usage_rather_than_invented_numbers(
    gateway: Gateway, fleet: dict[str, ModelServer]
) -> None:
    plain = registration("template", fleet["template"])
    plain.update(model_name="plain", usage_extract=None, finish_reason_extract="")
    async with gateway.client() as client:
        assert (await client.post("/api/server/register", json=plain)).status_code == 200
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": "plain", "messages": [{"role": "user", "content": PROMPT}]},
        )
    assert reply.status_code == 200, reply.text
    assert "usage" not in reply.json()
    assert reply.json()["choices"][0]["finish_reason"] == "stop"


# Tool calls, both ways between OpenAI clients and Ollama workers (and the reverse).

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "the forecast for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_an_openai_client_gets_tool_calls_and_sends_their_results(
    clients: Clients, fleet: dict[str, ModelServer], kind: str, stream: bool
) -> None:
    ask: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        async with clients.openai.chat.completions.stream(
            model=kind, messages=ask, tools=[WEATHER]
        ) as events:
            done = await events.get_final_completion()
    else:
        done = await clients.openai.chat.completions.create(
            model=kind, messages=ask, tools=[WEATHER]
        )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "weather"
    assert orjson.loads(call.function.arguments) == TOOL_ARGUMENTS
    if kind == "ollama":
        sent = fleet["ollama"].last
        assert sent["tools"][0]["function"]["name"] == "weather"
        assert sent["tools"][0]["function"]["parameters"] == WEATHER["function"]["parameters"]

    history = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    answer = await clients.openai.chat.completions.create(
        model=kind, messages=history, tools=[WEATHER]
    )
    assert answer.choices[0].message.content == f"{kind} says tool said sunny"
    if kind == "ollama":
        sent_history = fleet["ollama"].last["messages"]
        assert sent_history[1]["tool_calls"] == [
            {"function": {"name": "weather", "arguments": TOOL_ARGUMENTS}}
        ]
        assert sent_history[2] == {"role": "tool", "content": "sunny"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_ollama_client_gets_tool_calls_from_an_openai_worker(
    clients: Clients, fleet: dict[str, ModelServer], stream: bool
) -> None:
    ask = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        parts = [
            p
            async for p in await clients.ollama.chat(
                model="openai", messages=ask, tools=[WEATHER], stream=True
            )
        ]
        calls = [c for p in parts for c in p.message.tool_calls or ()]
    else:
        done = await clients.ollama.chat(model="openai", messages=ask, tools=[WEATHER])
        calls = list(done.message.tool_calls or ())
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("weather", TOOL_ARGUMENTS)
    ]
    assert fleet["openai"].last["tools"][0]["function"]["name"] == "weather"
    history = [
        *ask,
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
    ]
    answer = await clients.ollama.chat(model="openai", messages=history, tools=[WEATHER])
    assert answer.message.content == "openai says tool said sunny"
    sent = fleet["openai"].last["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "weather"
    assert orjson.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == TOOL_ARGUMENTS
    assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]


async def test_tools_for_a_template_worker_are_refused_not_dropped(
    clients: Clients, fleet: dict[str, ModelServer]
) -> None:
    with pytest.raises(openai.BadRequestError, match="tools cannot be sent"):
        await clients.openai.chat.completions.create(
            model="template", messages=[{"role": "user", "content": "x"}], tools=[WEATHER]
        )
    assert fleet["template"].received == []


# Errors keep their meaning.


async def test_a_workers_429_is_a_429_with_its_retry_after(gateway: Gateway) -> None:
    busy = ModelServer(protocol="ollama", name="busy", status=429, headers={"Retry-After": "7"})
    await busy.start()
    try:
        async with gateway.client() as client:
            body = {"model_name": "busy", "req_url_template": busy.url, "preset": "ollama"}
            assert (await client.post("/api/server/register", json=body)).status_code == 200
            chat = {"model": "busy", "messages": [{"role": "user", "content": "x"}]}
            for stream in (False, True):
                reply = await client.post("/v1/chat/completions", json={**chat, "stream": stream})
                assert reply.status_code == 429, reply.text
                assert reply.headers["Retry-After"] == "7"
                assert reply.json()["error"]["type"] == "rate_limit_error"
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key="x", max_retries=0
        ) as oai:
            with pytest.raises(openai.RateLimitError):
                await oai.chat.completions.create(
                    model="busy", messages=[{"role": "user", "content": "x"}]
                )
    finally:
        await busy.stop()


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/api/chat"])
async def test_a_translated_400_is_a_400_before_any_stream_begins(
    gateway: Gateway, route: str
) -> None:
    picky = ModelServer(protocol="template", name="picky", status=400)
    await picky.start()
    try:
        async with gateway.client() as client:
            body = registration("template-stream", picky)
            body["model_name"] = "picky"
            assert (await client.post("/api/server/register", json=body)).status_code == 200
            chat = {
                "model": "picky",
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
            }
            reply = await client.post(route, json=chat)
        assert reply.status_code == 400, reply.text
        assert "prompt too long" in reply.text
        assert reply.headers["content-type"].startswith("application/json")
    finally:
        await picky.stop()


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}),
        ("/api/chat", {"messages": [{"role": "user", "content": "x"}]}),
        ("/api/generate", {"prompt": "x"}),
    ],
)
async def test_a_stream_that_fails_at_once_is_an_http_error_not_a_200(
    gateway: Gateway, make_worker: Any, route: str, body: dict[str, Any]
) -> None:
    # A streaming template worker whose events never hold the stream_extract path's type.
    bad = await make_worker(raw=b'data: {"error": {"message": "model not loaded"}}\n\n')
    async with gateway.client() as client:
        reg = {
            "model_name": "bad",
            "req_url_template": f"{bad.url}/x",
            "body": {"q": "{USER_PROMPT}"},
            "is_stream": True,
            "stream_format": "sse",
            "stream_extract": "t",
        }
        assert (await client.post("/api/server/register", json=reg)).status_code == 200
        reply = await client.post(route, json={"model": "bad", **body})
    assert reply.status_code == 502, reply.text
    assert "model not loaded" in reply.text


# The routes clients call to learn about models.


async def test_model_routes_describe_what_the_gateway_knows(
    clients: Clients, fleet: dict[str, ModelServer]
) -> None:
    one = await clients.openai.models.retrieve("ollama")
    assert one.id == "ollama" and one.created > 1_700_000_000 and one.owned_by
    with pytest.raises(openai.NotFoundError):
        await clients.openai.models.retrieve("ghost")
    listed = [m async for m in clients.openai.models.list()]
    assert {m.id for m in listed} == set(KINDS) and all(m.created > 0 for m in listed)

    shown = await clients.ollama.show("ollama")
    assert "completion" in (shown.capabilities or []) and "embedding" in (shown.capabilities or [])
    assert "tools" not in ((await clients.ollama.show("template")).capabilities or [])
    with pytest.raises(ollama.ResponseError) as missing:
        await clients.ollama.show("ghost")
    assert missing.value.status_code == 404
    running = await clients.ollama.ps()
    assert {m.model for m in running.models} == set(KINDS)
    assert (await clients.http.get("/api/version")).json()["version"]
    tags = await clients.ollama.list()
    assert all(m.modified_at is not None for m in tags.models)


# Embeddings as the client asked for them.


async def test_embeddings_honour_encoding_format_and_dimensions(
    clients: Clients, fleet: dict[str, ModelServer]
) -> None:
    for kind in ("openai", "ollama"):
        floats = await clients.openai.embeddings.create(
            model=kind, input=["ab", "abc"], encoding_format="float", dimensions=4
        )
        assert [d.embedding for d in floats.data] == [[2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0]]
        assert fleet[kind].last["dimensions"] == 4
        packed = await clients.http.post(
            "/v1/embeddings", json={"model": kind, "input": "ab", "encoding_format": "base64"}
        )
        vector = array("f", base64.b64decode(packed.json()["data"][0]["embedding"])).tolist()
        assert vector[:2] == [2.0, 3.0]
        assert packed.json()["usage"]["prompt_tokens"] == 1
    legacy = await clients.ollama.embeddings(model="openai", prompt="abcd")
    assert list(legacy.embedding) == [4.0, 5.0, 6.0]
    embedded = await clients.ollama.embed(model="openai", input=["ab"])
    assert [list(v) for v in embedded.embeddings] == [[2.0, 3.0, 4.0]]
    assert embedded.prompt_eval_count == 1
