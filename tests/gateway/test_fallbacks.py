"""Model settings through the admin API and the config file; fallbacks on each trigger; aliases."""

import asyncio
import json
import logging
from typing import Any

import httpx
import openai
import pytest

from gateway.observe import MODEL_HEADER
from registry import ModelSettings
from tests.conftest import GatewayFactory, ProtocolWorkerFactory, WorkerFactory
from tests.gateway.test_health import FAST_HEALTH, health_of, until
from tests.gateway.test_seed_api import register, seed_registration

CONTEXT_TOO_LONG = (
    "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens "
    "(8000 in the messages, 1000 in the completion). Please reduce the length of the messages."
)


async def put_model(http: httpx.AsyncClient, name: str, **settings: Any) -> httpx.Response:
    return await http.put(f"/api/server/models/{name}", json=settings)


async def chat(
    http: httpx.AsyncClient, model: str, text: str = "x", **headers: str
) -> httpx.Response:
    body = {"input": text, "model_name": model}
    return await http.post("/api/v1/chat/completions", json=body, headers=headers)


async def test_model_settings_are_set_read_listed_and_removed(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first, second = await make_gateway(), await make_gateway()
    worker = await make_worker(name="big")
    async with first.client() as http, second.client() as other:
        assert (await register(http, seed_registration("big", worker))).status_code == 200
        reply = await put_model(http, "big", fallbacks=["small"], balancing="prefix")
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        assert data["source"] == "api" and data["workers"] == 1
        assert data["settings"]["fallbacks"] == ["small"]
        assert data["balancing"] == "prefix"

        # The other process learns it from the change event.
        async def seen() -> bool:
            got = await other.get("/api/server/models/big")
            return got.status_code == 200 and got.json()["data"]["source"] == "api"

        await until(seen)
        listing = (await other.get("/api/server/models")).json()["data"]
        assert [(m["name"], m["source"]) for m in listing] == [("big", "api")]

        removed = await http.delete("/api/server/models/big")
        assert removed.status_code == 200
        after = (await http.get("/api/server/models/big")).json()["data"]
        assert after["source"] == "default" and after["settings"]["fallbacks"] == []
        assert (await http.delete("/api/server/models/big")).status_code == 404
        assert (await http.get("/api/server/models/nothing")).status_code == 404


async def test_model_names_with_slashes_and_bad_settings(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    async with gateway.client() as http:
        name = "meta-llama/Llama-3.1-8B"
        reply = await put_model(http, name, fallbacks=["meta-llama/Llama-3.2-1B"])
        assert reply.status_code == 200, reply.text
        assert (await http.get(f"/api/server/models/{name}")).json()["data"]["name"] == name
        for settings, says in (
            ({"fallbacks": [name]}, "its own fallback"),
            ({"fallbacks": ["a", "a"]}, "more than once"),
            ({"fallbacks": ["a"], "fallbak_on": ["failed"]}, "fallbak_on"),
            ({"fallback_on": ["sometimes"]}, "fallback_on"),
            ({"alias": [{"model": "a", "weight": 0}]}, "weight above 0"),
            ({"alias": [{"model": "a"}], "balancing": "prefix"}, "balancing does not apply"),
            ({"balancing": "random"}, "balancing"),
        ):
            bad = await put_model(http, name, **settings)
            assert bad.status_code == 422, (settings, bad.text)
            assert says in bad.json()["msg"], (settings, bad.text)
        await put_model(http, "canary", alias=[{"model": "a"}])
        nested = await put_model(http, "outer", alias=[{"model": "canary"}])
        assert nested.status_code == 422 and "alias itself" in nested.json()["msg"]
        spaced = await put_model(http, " padded", fallbacks=["a"])
        assert spaced.status_code == 422


async def test_config_file_settings_apply_until_the_api_overrides_them(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    small = await make_worker(name="small")
    gateway = await make_gateway(models={"big": ModelSettings(fallbacks=["small"])})
    async with gateway.client() as http:
        await register(http, seed_registration("small", small))
        assert (await http.get("/api/server/models/big")).json()["data"]["source"] == "config"
        reply = await chat(http, "big")  # no worker of its own: the fallback answers
        assert reply.status_code == 200, reply.text
        assert reply.headers[MODEL_HEADER] == "small"

        await put_model(http, "big", fallbacks=[])  # the API's record wins over the file's
        assert (await chat(http, "big")).status_code == 404
        await http.delete("/api/server/models/big")  # and the file's applies again
        assert (await chat(http, "big")).status_code == 200


async def test_fallback_when_every_worker_of_the_model_is_down(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(**FAST_HEALTH)
    big, small = await make_worker(name="big"), await make_worker(name="small")
    async with gateway.client() as http:
        await register(http, seed_registration("big", big))
        await register(http, seed_registration("small", small))
        await put_model(http, "big", fallbacks=["small"], fallback_on=["no_worker"])
        ok = await chat(http, "big", "hello")
        assert ok.json()["result"] == "big: hello" and ok.headers[MODEL_HEADER] == "big"
        await big.stop()
        await until(lambda: _all_down(http, "big"))

        reply = await chat(http, "big", "hello")
        assert reply.status_code == 200
        assert reply.json()["result"] == "small: hello"
        assert reply.headers[MODEL_HEADER] == "small"


async def _all_down(http: httpx.AsyncClient, model: str) -> bool:
    return set((await health_of(http, model)).values()) == {"down"}


async def test_fallback_when_every_try_failed(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await make_gateway(access_log=1.0)
    broken = [await make_worker(name=f"big{i}", status=500) for i in range(2)]
    small = await make_worker(name="small")
    async with gateway.client() as http:
        for worker in broken:
            await register(http, seed_registration("big", worker))
        await register(http, seed_registration("small", small))
        await put_model(http, "big", fallbacks=["small"])
        with caplog.at_level(logging.INFO, logger="gateway.access"):
            reply = await chat(http, "big", "hi")
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"] == "small: hi"
        assert [w.count for w in broken] == [1, 1]  # both tried first
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
        line = next(entry for entry in lines if entry["route"] == "/api/v1/chat/completions")
        assert (line["model"], line["served_model"]) == ("big", "small")


async def test_fallback_on_is_respected_and_an_exhausted_chain_says_what_each_model_said(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    big = await make_worker(name="big", status=500)
    small = await make_worker(name="small", status=503)
    async with gateway.client() as http:
        await register(http, seed_registration("big", big))
        await register(http, seed_registration("small", small))
        await put_model(http, "big", fallbacks=["small"], fallback_on=["no_worker"])
        refused = await chat(http, "big")
        assert refused.status_code == 502 and small.count == 0  # "failed" is not listed

        await put_model(http, "big", fallbacks=["small"], fallback_on=["failed"])
        both = await chat(http, "big")
        assert both.status_code == 502
        message = both.json()["msg"]
        assert "model 'big'" in message and "; then model 'small'" in message
        assert MODEL_HEADER not in both.headers


async def test_overloaded_model_falls_back_at_once_instead_of_queueing(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(queue_timeout_s=30)
    big = await make_worker(name="big", delay_s=0.5)
    small = await make_worker(name="small")
    async with gateway.client() as http:
        await register(http, seed_registration("big", big, max_concurrency=1))
        await register(http, seed_registration("small", small))
        await put_model(http, "big", fallbacks=["small"], fallback_on=["overloaded"])
        first = asyncio.create_task(chat(http, "big", "one"))
        await until(lambda: big.count == 1)
        second = await chat(http, "big", "two")  # would wait up to 30 s in the queue
        assert second.status_code == 200
        assert (second.json()["result"], second.headers[MODEL_HEADER]) == ("small: two", "small")
        assert (await first).headers[MODEL_HEADER] == "big"


async def test_context_too_long_falls_back_and_keeps_the_asked_model_name(
    make_gateway: GatewayFactory, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    gateway = await make_gateway()
    short = await make_protocol_worker(name="short", status=400, error_message=CONTEXT_TOO_LONG)
    long = await make_protocol_worker(name="long")
    async with gateway.client() as http:
        for model, worker in (("short", short), ("long", long)):
            body = {"model_name": model, "preset": "openai", "req_url_template": worker.base_url}
            assert (await http.post("/api/server/register", json=body)).status_code == 200

        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key="x", max_retries=0
        ) as client:
            messages: Any = [{"role": "user", "content": "a long story"}]
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="short", messages=messages)
            assert refused.value.code == "context_length_exceeded"
            assert "maximum context length is 4096" in refused.value.message

            await put_model(http, "short", fallbacks=["long"])
            raw = await client.chat.completions.with_raw_response.create(
                model="short", messages=messages
            )
            answer = raw.parse()
            assert raw.headers[MODEL_HEADER] == "long"
            assert answer.model == "short"  # the name the client asked for
            assert answer.choices[0].message.content == "long says a long story"

            stream = await client.chat.completions.with_raw_response.create(
                model="short", messages=messages, stream=True
            )
            assert stream.headers[MODEL_HEADER] == "long"
            chunks = [chunk async for chunk in stream.parse()]
            assert {chunk.model for chunk in chunks} == {"short"}
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "long says a long story"


async def test_a_plain_bad_request_is_no_context_error(
    make_gateway: GatewayFactory, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    gateway = await make_gateway()
    picky = await make_protocol_worker(
        name="picky", status=400, error_message="temperature must be at most 2; context: none"
    )
    other = await make_protocol_worker(name="other")
    async with gateway.client() as http:
        for model, worker in (("picky", picky), ("other", other)):
            body = {"model_name": model, "preset": "openai", "req_url_template": worker.base_url}
            await http.post("/api/server/register", json=body)
        await put_model(http, "picky", fallbacks=["other"])
        body = {"model": "picky", "messages": [{"role": "user", "content": "x"}]}
        reply = await http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 400  # the worker's own refusal, passed on
        assert reply.json()["error"]["code"] == "invalid_request"
        assert other.count == 0


async def test_alias_shares_are_within_5_percent_over_2000_requests(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    stable, canary = await make_worker(name="v1"), await make_worker(name="v2")
    async with gateway.client() as http:
        await register(http, seed_registration("chat-v1", stable))
        await register(http, seed_registration("chat-v2", canary))
        arms = [{"model": "chat-v1", "weight": 85}, {"model": "chat-v2", "weight": 15}]
        reply = await put_model(http, "chat", alias=arms)
        assert reply.json()["data"]["alias"] is True
        models = (await http.get("/v1/models")).json()["data"]
        assert {m["id"] for m in models} == {"chat", "chat-v1", "chat-v2"}

        limit = asyncio.Semaphore(16)
        served: dict[str, int] = {}

        async def one(index: int) -> None:
            async with limit:
                answer = await chat(http, "chat", f"q{index}")
            assert answer.status_code == 200
            model = answer.headers[MODEL_HEADER]
            assert answer.json()["result"] == f"{'v1' if model == 'chat-v1' else 'v2'}: q{index}"
            served[model] = served.get(model, 0) + 1

        await asyncio.gather(*(one(i) for i in range(2000)))
        assert abs(served["chat-v2"] / 2000 - 0.15) < 0.05
        assert abs(served["chat-v1"] / 2000 - 0.85) < 0.05


async def test_alias_keeps_a_session_on_one_model_in_every_process(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first, second = await make_gateway(), await make_gateway()
    stable, canary = await make_worker(name="v1"), await make_worker(name="v2")
    async with first.client() as http, second.client() as other:
        await register(http, seed_registration("chat-v1", stable))
        await register(http, seed_registration("chat-v2", canary))
        await put_model(http, "chat", alias=[{"model": "chat-v1"}, {"model": "chat-v2"}])
        await until(lambda: _knows(other, "chat"))
        arms: dict[str, set[str]] = {}
        for session in range(40):
            for turn, client in enumerate((http, other, http)):
                headers = {"X-Session-ID": f"s{session}"}
                reply = await chat(client, "chat", f"turn {turn}", **headers)
                arms.setdefault(f"s{session}", set()).add(reply.headers[MODEL_HEADER])
        assert all(len(models) == 1 for models in arms.values())
        v2 = sum(models == {"chat-v2"} for models in arms.values())
        assert 8 <= v2 <= 32  # both arms get sessions (20 of 40 expected)


async def _knows(http: httpx.AsyncClient, model: str) -> bool:
    return (await http.get(f"/api/server/models/{model}")).status_code == 200
