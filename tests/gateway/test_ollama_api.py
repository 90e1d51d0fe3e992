"""The Ollama API through the official `ollama` client, for workers of every protocol."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import Gateway
from tests.gateway.test_openai_api import EXPECTED, three_models  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("three_models")


@pytest.fixture
async def sdk(gateway: Gateway) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=gateway.url)
    yield client
    await client.close()


async def test_sync_client_chats_with_every_kind_of_worker(gateway: Gateway) -> None:
    def run() -> tuple[dict[str, str], dict[str, str]]:
        whole, streamed = {}, {}
        with ollama.Client(host=gateway.url) as sdk:
            for model in EXPECTED:
                reply = sdk.chat(model=model, messages=[{"role": "user", "content": "hello there"}])
                assert reply.model == model and reply.done
                whole[model] = reply.message.content or ""
                parts = sdk.chat(
                    model=model, messages=[{"role": "user", "content": "hello there"}], stream=True
                )
                streamed[model] = "".join(part.message.content or "" for part in parts)
        return whole, streamed

    whole, streamed = await asyncio.to_thread(run)
    assert whole == EXPECTED
    assert streamed == EXPECTED


async def test_async_client_generates_and_streams(sdk: ollama.AsyncClient) -> None:
    for model in EXPECTED:
        reply = await sdk.generate(model=model, prompt="hello there", stream=False)
        assert reply.response == EXPECTED[model]
        parts = [
            part.response
            async for part in await sdk.generate(model=model, prompt="hello there", stream=True)
        ]
        assert "".join(parts) == EXPECTED[model]


async def test_ollama_worker_gets_the_body_passed_through(
    sdk: ollama.AsyncClient,
    three_models: dict[str, Any],  # noqa: F811
) -> None:
    await sdk.chat(
        model="llama",
        messages=[{"role": "user", "content": "hi"}],
        options={"temperature": 0.2, "num_ctx": 4096},
        keep_alive="5m",
        stream=False,
    )
    sent = three_models["llama"].received[-1].json()
    assert sent["options"] == {"temperature": 0.2, "num_ctx": 4096}
    assert sent["keep_alive"] == "5m"
    assert sent["stream"] is False


async def test_openai_worker_gets_a_translated_request(
    sdk: ollama.AsyncClient,
    three_models: dict[str, Any],  # noqa: F811
) -> None:
    await sdk.chat(
        model="qwen",
        messages=[{"role": "user", "content": "hi"}],
        options={"temperature": 0.2, "top_p": 0.9, "num_predict": 64},
    )
    sent = three_models["qwen"].received[-1].json()
    assert sent == {
        "model": "Qwen/Qwen3-4B",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "stream": False,  # the ollama client asks for a whole answer unless told to stream
    }


async def test_list_and_embed(sdk: ollama.AsyncClient) -> None:
    listed = await sdk.list()
    assert sorted(m.model or "" for m in listed.models) == ["custom", "llama", "qwen"]
    assert (await sdk.embed(model="llama", input="abc")).embeddings == [[3.0, 2.0]]
    assert (await sdk.embed(model="qwen", input=["ab", "c"])).embeddings == [
        [2.0, 1.0, 0.0],
        [1.0, 1.0, 0.0],
    ]


async def test_errors_come_in_ollama_shape(
    sdk: ollama.AsyncClient, client: httpx.AsyncClient
) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await sdk.chat(model="ghost", messages=[{"role": "user", "content": "x"}], stream=False)
    assert caught.value.status_code == 404
    assert "ghost" in caught.value.error
    bad = await client.post("/api/chat", json={"model": "llama", "messages": "nope"})
    assert bad.status_code == 422
    assert isinstance(bad.json()["error"], str)
