"""The OpenAI Responses API, with the official client, on every kind of worker.

The gateway keeps the state: a stored response continues (`previous_response_id`) on any
worker, through any gateway process on the same Redis, and belongs to the key that made it.
"""

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.gateway.test_fidelity import start_fleet
from tests.model_server import TOOL_ARGUMENTS, ModelServer, answer_words

KINDS = ("openai", "ollama", "template", "template-stream", "anthropic")
PROMPT = "tell me a story"
WEATHER: Any = {
    "type": "function",
    "name": "weather",
    "description": "the forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def fleet(gateway: Gateway) -> AsyncIterator[dict[str, ModelServer]]:
    servers = await start_fleet(gateway, KINDS)
    yield servers
    for server in servers.values():
        await server.stop()


@pytest.fixture
async def sdk(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_responses_whole_and_streamed_on_every_kind_of_worker(
    sdk: openai.AsyncOpenAI, fleet: dict[str, ModelServer], kind: str
) -> None:
    words = answer_words(kind, PROMPT)
    done = await sdk.responses.create(model=kind, input=PROMPT, max_output_tokens=3)
    assert done.output_text == "".join(words[:3])
    assert done.status == "incomplete"
    assert done.incomplete_details is not None
    assert done.incomplete_details.reason == "max_output_tokens"
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (4, 3)

    async with sdk.responses.stream(model=kind, input=PROMPT, instructions="be kind") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "".join(words)
    assert final.status == "completed" and final.output_text == "".join(words)
    retrieved = await sdk.responses.retrieve(final.id)
    assert retrieved.output_text == "".join(words)


async def test_a_conversation_continues_through_another_gateway_process(
    make_gateway: GatewayFactory,
) -> None:
    first, second = await make_gateway(), await make_gateway()
    servers = await start_fleet(first, ("ollama",))
    try:
        async with (
            openai.AsyncOpenAI(base_url=f"{first.url}/v1", api_key="x", max_retries=0) as one,
            openai.AsyncOpenAI(base_url=f"{second.url}/v1", api_key="x", max_retries=0) as two,
        ):
            opening = await one.responses.create(
                model="ollama", input="my name is Ada", instructions="sys"
            )
            await first.runner.cleanup()  # the first process is gone; its conversation is not
            follow = await two.responses.create(
                model="ollama", input="what is my name", previous_response_id=opening.id
            )
            assert follow.output_text == "".join(answer_words("ollama", "what is my name"))
            sent = servers["ollama"].last["messages"]
            assert [m["role"] for m in sent] == ["user", "assistant", "user"]
            assert sent[0]["content"] == "my name is Ada"
            assert sent[1]["content"] == "".join(answer_words("ollama", "my name is Ada"))
            items = await two.responses.input_items.list(follow.id)
            assert [i.content[0].text for i in items.data] == ["what is my name"]  # type: ignore[union-attr]
            await two.responses.delete(opening.id)
            with pytest.raises(openai.NotFoundError):
                await two.responses.retrieve(opening.id)
            with pytest.raises(openai.NotFoundError):
                await two.responses.create(
                    model="ollama", input="x", previous_response_id=opening.id
                )
    finally:
        for server in servers.values():
            await server.stop()


@pytest.mark.parametrize("kind", ["openai", "ollama", "anthropic"])
async def test_function_calls_and_their_outputs(
    sdk: openai.AsyncOpenAI, fleet: dict[str, ModelServer], kind: str
) -> None:
    asked = await sdk.responses.create(model=kind, input="weather in Paris?", tools=[WEATHER])
    (call,) = [item for item in asked.output if item.type == "function_call"]
    assert call.name == "weather"
    assert orjson.loads(call.arguments) == TOOL_ARGUMENTS
    answered = await sdk.responses.create(
        model=kind,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert answered.output_text == f"{kind} says tool said sunny"


async def test_unstored_responses_and_hosted_tools(
    sdk: openai.AsyncOpenAI, fleet: dict[str, ModelServer]
) -> None:
    done = await sdk.responses.create(model="openai", input=PROMPT, store=False)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(done.id)
    with pytest.raises(openai.BadRequestError, match="only function tools"):
        await sdk.responses.create(model="openai", input=PROMPT, tools=[{"type": "web_search"}])


async def test_a_stored_response_belongs_to_the_key_that_made_it(
    make_gateway: GatewayFactory,
) -> None:
    token = "t" * 32
    gateway = await make_gateway(admin_token=token, require_api_keys=True)
    servers = await start_fleet(gateway, ())
    server = ModelServer(protocol="ollama", name="llama")
    await server.start()
    try:
        async with gateway.client(headers={"Authorization": f"Bearer {token}"}) as admin:
            body = {"model_name": "llama", "req_url_template": server.url, "preset": "ollama"}
            assert (await admin.post("/api/server/register", json=body)).status_code == 200
            keys = []
            for name in ("a", "b"):
                made = (await admin.post("/api/server/keys", json={"name": name})).json()
                keys.append(made.get("key") or made["data"]["key"])
        url = f"{gateway.url}/v1"
        async with (
            openai.AsyncOpenAI(base_url=url, api_key=keys[0], max_retries=0) as alice,
            openai.AsyncOpenAI(base_url=url, api_key=keys[1], max_retries=0) as bob,
        ):
            mine = await alice.responses.create(model="llama", input=PROMPT)
            assert (await alice.responses.retrieve(mine.id)).id == mine.id
            with pytest.raises(openai.NotFoundError):
                await bob.responses.retrieve(mine.id)
            with pytest.raises(openai.NotFoundError):
                await bob.responses.create(model="llama", input="x", previous_response_id=mine.id)
    finally:
        await server.stop()
        assert servers == {}
