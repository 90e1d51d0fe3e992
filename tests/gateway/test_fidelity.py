"""The fidelity matrix: every inbound route x every worker kind x whole / streamed.

Each worker kind (an OpenAI-compatible server, Ollama, a seed-style template service, the
same streaming) is a real HTTP server keeping a model server's rules (tests/model_server.py):
`max_tokens` cuts the answer with finish reason "length", usage counts what was asked and
answered. Each route is called with its official client where one exists. What a user must
see on every cell: the same text, the assistant role first on a stream, "length" kept as
"length", and the worker's own token counts.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import Gateway
from tests.model_server import ModelServer, answer_words

PROMPT = "tell me a story"
PROMPT_TOKENS = 4  # the fake counts words

TEMPLATE_BODY = {"ask": "{USER_PROMPT}", "limit": "{MAX_TOKENS}", "stream": "{STREAM}"}
KINDS = ("openai", "ollama", "template", "template-stream")


def registration(kind: str, server: ModelServer) -> dict[str, Any]:
    if kind in ("openai", "ollama"):
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


@pytest.fixture
async def fleet(gateway: Gateway) -> AsyncIterator[dict[str, ModelServer]]:
    servers = {}
    async with gateway.client() as client:
        for kind in KINDS:
            server = ModelServer(protocol=kind.split("-")[0], name=kind)
            await server.start()
            servers[kind] = server
            reply = await client.post("/api/server/register", json=registration(kind, server))
            assert reply.status_code == 200, reply.text
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
    found = Clients(
        openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0),
        ollama.AsyncClient(host=gateway.url),
        gateway.client(),
    )
    yield found
    await found.openai.close()
    await found.ollama.close()
    await found.http.aclose()


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
