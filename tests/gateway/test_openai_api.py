"""The OpenAI API through the official `openai` SDK, for workers of every protocol."""

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, ProtocolWorkerFactory, WorkerFactory
from tests.gateway.test_seed_api import register, seed_registration
from tests.workers import ProtocolWorker


def preset_registration(model: str, worker: ProtocolWorker, **extra: Any) -> dict[str, Any]:
    return {
        "model_name": model,
        "req_url_template": worker.base_url,
        "preset": worker.protocol,
        **extra,
    }


def sync_client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def async_client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
async def three_models(
    client: httpx.AsyncClient,
    make_worker: WorkerFactory,
    make_protocol_worker: ProtocolWorkerFactory,
) -> dict[str, Any]:
    """A vLLM-like worker, an Ollama worker and a seed-style custom worker, side by side."""
    vllm = await make_protocol_worker("openai", name="vllm")
    ollama = await make_protocol_worker("ollama", name="ollama")
    custom = await make_worker(name="custom")
    for reply in [
        await register(client, preset_registration("qwen", vllm, upstream_model="Qwen/Qwen3-4B")),
        await register(client, preset_registration("llama", ollama)),
        await register(client, seed_registration("custom", custom)),
    ]:
        assert reply.status_code == 200, reply.text
    return {"qwen": vllm, "llama": ollama, "custom": custom}


EXPECTED = {
    "qwen": "vllm says hello there",
    "llama": "ollama says hello there",
    "custom": "custom: hello there",
}


async def test_sync_sdk_chats_with_every_kind_of_worker(
    gateway: Gateway, three_models: dict[str, Any]
) -> None:
    def run() -> dict[str, str]:
        with sync_client(gateway) as sdk:
            out = {}
            for model in EXPECTED:
                reply = sdk.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello there"}]
                )
                assert reply.model == model
                out[model] = reply.choices[0].message.content or ""
            return out

    assert await asyncio.to_thread(run) == EXPECTED
    vllm = three_models["qwen"]
    assert vllm.received[-1].json()["model"] == "Qwen/Qwen3-4B"


async def test_sync_sdk_streams_from_every_kind_of_worker(
    gateway: Gateway, three_models: dict[str, Any]
) -> None:
    def run() -> dict[str, list[str]]:
        with sync_client(gateway) as sdk:
            out = {}
            for model in EXPECTED:
                stream = sdk.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "hello there"}],
                    stream=True,
                )
                out[model] = [c.choices[0].delta.content or "" for c in stream if c.choices]
            return out

    pieces = await asyncio.to_thread(run)
    assert {model: "".join(parts) for model, parts in pieces.items()} == EXPECTED
    # Streaming workers stream piece by piece; the custom one cannot, so it comes whole.
    assert len([p for p in pieces["qwen"] if p]) == 4
    assert len([p for p in pieces["llama"] if p]) == 4
    assert [p for p in pieces["custom"] if p] == ["custom: hello there"]


async def test_async_sdk_streams_and_sees_the_alias_not_the_upstream_name(
    gateway: Gateway, three_models: dict[str, Any]
) -> None:
    async with async_client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "hello there"}], stream=True
        )
        models, text = set(), []
        async for chunk in stream:
            models.add(chunk.model)
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    assert models == {"qwen"}
    assert "".join(text) == EXPECTED["qwen"]


async def test_passthrough_keeps_fields_the_gateway_does_not_know(
    gateway: Gateway, three_models: dict[str, Any]
) -> None:
    async with async_client(gateway) as sdk:
        await sdk.chat.completions.create(
            model="qwen",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
            temperature=0.1,
            seed=42,
            stop=["\n"],
            extra_body={"top_k": 20},
        )
    sent = three_models["qwen"].received[-1].json()
    assert sent["seed"] == 42 and sent["stop"] == ["\n"] and sent["top_k"] == 20
    assert sent["temperature"] == 0.1
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}


async def test_translated_chat_sends_the_whole_conversation_to_an_ollama_worker(
    gateway: Gateway, three_models: dict[str, Any]
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    async with async_client(gateway) as sdk:
        reply = await sdk.chat.completions.create(
            model="llama",
            messages=messages,
            temperature=0.3,
            max_tokens=50,  # type: ignore[arg-type]
        )
    assert reply.choices[0].message.content == "ollama says second"
    sent = three_models["llama"].received[-1].json()
    assert sent["model"] == "llama"
    assert sent["messages"] == messages
    assert sent["stream"] is False
    assert sent["options"] == {"temperature": 0.3, "num_predict": 50}


async def test_completions_and_embeddings(gateway: Gateway, three_models: dict[str, Any]) -> None:
    async with async_client(gateway) as sdk:
        done = await sdk.completions.create(model="qwen", prompt="once upon")
        assert done.choices[0].text == "vllm says once upon"
        from_ollama = await sdk.completions.create(model="llama", prompt="once upon")
        assert from_ollama.choices[0].text == "ollama says once upon"
        streamed = await sdk.completions.create(model="llama", prompt="a b", stream=True)
        assert "".join([c.choices[0].text async for c in streamed]) == "ollama says a b"

        vectors = await sdk.embeddings.create(model="qwen", input=["abc", "de"])
        assert [d.embedding for d in vectors.data] == [[3.0, 1.0, 0.0], [2.0, 1.0, 0.0]]
        via_ollama = await sdk.embeddings.create(model="llama", input="abcd")
        assert [d.embedding for d in via_ollama.data] == [[4.0, 2.0]]
        with pytest.raises(openai.BadRequestError, match="embeddings"):
            await sdk.embeddings.create(model="custom", input="x")


async def test_models_lists_every_registered_model(
    gateway: Gateway, three_models: dict[str, Any]
) -> None:
    async with async_client(gateway) as sdk:
        listed = [m.id async for m in sdk.models.list()]
    assert sorted(listed) == ["custom", "llama", "qwen"]


async def test_sdk_raises_its_own_typed_errors(
    gateway: Gateway, make_protocol_worker: ProtocolWorkerFactory, client: httpx.AsyncClient
) -> None:
    broken = await make_protocol_worker("openai", name="broken", status=500)
    await register(client, preset_registration("broken", broken))
    async with async_client(gateway) as sdk:
        with pytest.raises(openai.NotFoundError, match="ghost"):
            await sdk.chat.completions.create(
                model="ghost", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError, match="messages"):
            await sdk.chat.completions.create(model="ghost", messages=[])
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(
                model="broken", messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.status_code == 502
    raw = await client.post("/v1/chat/completions", content=b"{nope")
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "code"}


async def test_seed_route_reaches_an_openai_worker(
    client: httpx.AsyncClient, three_models: dict[str, Any]
) -> None:
    reply = await client.post(
        "/api/v1/chat/completions", json={"input": "hello there", "model_name": "qwen"}
    )
    assert reply.json() == {"success": True, "msg": "execute succeed", "result": EXPECTED["qwen"]}
    sent = three_models["qwen"].received[-1].json()
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["stream"] is False


async def test_presets_are_listed_as_data(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/api/server/presets")).json()["data"]
    by_name = {p["name"]: p for p in listed}
    assert set(by_name) >= {"openai", "ollama"}
    assert by_name["openai"]["operations"]["chat"]["path"] == "/chat/completions"


async def test_explicit_fields_override_the_preset(
    client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    vllm = await make_protocol_worker("openai", name="vllm")
    body = preset_registration(
        "tuned",
        vllm,
        body={"model": "{MODEL_NAME}", "messages": "{MESSAGES}", "temperature": 0.0},
    )
    assert (await register(client, body)).status_code == 200
    reply = await client.post(
        "/api/v1/chat/completions", json={"input": "x", "model_name": "tuned"}
    )
    assert reply.json()["result"] == "vllm says x"
    assert vllm.received[-1].json() == {
        "model": "tuned",
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0.0,
    }


async def test_unknown_preset_is_refused(client: httpx.AsyncClient) -> None:
    reply = await register(
        client, {"model_name": "m", "req_url_template": "http://h/v1", "preset": "tgi"}
    )
    assert reply.status_code == 422
    assert "unknown preset 'tgi'" in reply.json()["msg"]
