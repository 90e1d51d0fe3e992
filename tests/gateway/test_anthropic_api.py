"""The Anthropic Messages API, with the official `anthropic` client, on every kind of worker.

An Anthropic-compatible worker gets the client's own body (passthrough); an OpenAI, Ollama or
template worker is translated: content blocks, tool use and results, stop reasons, usage and
the event stream must come out as Anthropic's SDK expects them.
"""

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.gateway.test_fidelity import start_fleet
from tests.model_server import TOOL_ARGUMENTS, ModelServer, answer_words

KINDS = ("anthropic", "openai", "ollama", "template", "template-stream")
PROMPT = "tell me a story"
WEATHER = {
    "name": "weather",
    "description": "the forecast for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def fleet(gateway: Gateway) -> AsyncIterator[dict[str, ModelServer]]:
    servers = await start_fleet(gateway, KINDS)
    yield servers
    for server in servers.values():
        await server.stop()


@pytest.fixture
async def sdk(gateway: Gateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    yield client
    await client.close()


def ask(text: str = PROMPT) -> Any:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_whole_and_streamed_on_every_kind_of_worker(
    sdk: anthropic.AsyncAnthropic, fleet: dict[str, ModelServer], kind: str
) -> None:
    words = answer_words(kind, PROMPT)
    done = await sdk.messages.create(model=kind, max_tokens=3, messages=ask())
    assert done.role == "assistant" and done.model == kind
    assert [b.type for b in done.content] == ["text"]
    assert done.content[0].text == "".join(words[:3])  # type: ignore[union-attr]
    assert done.stop_reason == "max_tokens"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (4, 3)

    async with sdk.messages.stream(model=kind, max_tokens=100, messages=ask()) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "".join(words)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(words)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["anthropic", "openai", "ollama"])
async def test_a_tool_use_round_trip(
    sdk: anthropic.AsyncAnthropic, fleet: dict[str, ModelServer], kind: str, stream: bool
) -> None:
    question = ask("weather in Paris?")
    if stream:
        async with sdk.messages.stream(
            model=kind,
            max_tokens=100,
            messages=question,
            tools=[WEATHER],  # type: ignore[list-item]
        ) as events:
            done = await events.get_final_message()
    else:
        done = await sdk.messages.create(
            model=kind,
            max_tokens=100,
            messages=question,
            tools=[WEATHER],  # type: ignore[list-item]
        )
    assert done.stop_reason == "tool_use"
    (use,) = [b for b in done.content if b.type == "tool_use"]
    assert use.name == "weather" and use.input == TOOL_ARGUMENTS
    history: Any = [
        *question,
        {"role": "assistant", "content": [b.model_dump() for b in done.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]
    answer = await sdk.messages.create(
        model=kind,
        max_tokens=100,
        messages=history,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert answer.content[0].text == f"{kind} says tool said sunny"  # type: ignore[union-attr]
    if kind == "openai":
        sent = fleet["openai"].last["messages"]
        assert sent[1]["tool_calls"][0]["function"]["name"] == "weather"
        assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": use.id}


async def test_system_prompt_and_stop_sequences_reach_a_translated_worker(
    sdk: anthropic.AsyncAnthropic, fleet: dict[str, ModelServer]
) -> None:
    await sdk.messages.create(
        model="openai",
        max_tokens=50,
        system="be brief",
        stop_sequences=["END"],
        messages=ask(),
        extra_body={"temperature": 0.5},
    )
    sent = fleet["openai"].last
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["stop"] == ["END"] and sent["temperature"] == 0.5 and sent["max_tokens"] == 50


async def test_errors_come_in_anthropics_shape(
    sdk: anthropic.AsyncAnthropic, fleet: dict[str, ModelServer]
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await sdk.messages.create(model="ghost", max_tokens=5, messages=ask())
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as invalid:
        await sdk.messages.create(model="openai", max_tokens=0, messages=ask())
    assert invalid.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="tools cannot be sent"):
        await sdk.messages.create(
            model="template",
            max_tokens=5,
            messages=ask(),
            tools=[WEATHER],  # type: ignore[list-item]
        )


async def test_count_tokens_only_where_a_worker_can_count(
    sdk: anthropic.AsyncAnthropic, fleet: dict[str, ModelServer]
) -> None:
    counted = await sdk.messages.count_tokens(model="anthropic", messages=ask())
    assert counted.input_tokens == 4
    with pytest.raises(anthropic.APIStatusError) as refused:
        await sdk.messages.count_tokens(model="openai", messages=ask())
    assert refused.value.status_code == 501
    assert "does not guess" in refused.value.message


async def test_an_anthropic_client_authenticates_with_x_api_key(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(admin_token="a" * 32, require_api_keys=True)
    server = ModelServer(protocol="ollama", name="llama")
    await server.start()
    try:
        admin = {"Authorization": "Bearer " + "a" * 32}
        async with gateway.client(headers=admin) as client:
            body = {"model_name": "llama", "req_url_template": server.url, "preset": "ollama"}
            assert (await client.post("/api/server/register", json=body)).status_code == 200
            key = (await client.post("/api/server/keys", json={"name": "claude"})).json()
        secret = key.get("key") or key["data"]["key"]
        async with anthropic.AsyncAnthropic(
            base_url=gateway.url, api_key=secret, max_retries=0
        ) as good:
            done = await good.messages.create(model="llama", max_tokens=50, messages=ask())
            assert done.content[0].text == "".join(answer_words("llama", PROMPT))  # type: ignore[union-attr]
        async with anthropic.AsyncAnthropic(
            base_url=gateway.url, api_key="sk-wrong", max_retries=0
        ) as bad:
            with pytest.raises(anthropic.PermissionDeniedError):
                await bad.messages.create(model="llama", max_tokens=5, messages=ask())
    finally:
        await server.stop()
