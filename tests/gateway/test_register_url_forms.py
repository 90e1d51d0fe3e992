"""Registering a preset worker by its base URL or an endpoint URL: one worker, calls that work.

The seed's own sense of `req_url_template` is the full endpoint URL; a preset appends its
paths to a base URL. Either form must give the same worker, reachable on every route, and
either form must take it offline.
"""

import httpx
import openai
import pytest

from tests.conftest import Gateway, ProtocolWorkerFactory
from tests.gateway.test_openai_api import async_client
from tests.gateway.test_seed_api import register
from tests.workers import ProtocolWorker

ENDPOINTS = {
    "openai": ["", "/", "/chat/completions", "/completions/", "/embeddings", "/models"],
    "ollama": [
        "",
        "/",
        "/api/chat",
        "/api/generate/",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
    ],
}


def forms(worker: ProtocolWorker) -> list[str]:
    return [worker.base_url + path for path in ENDPOINTS[worker.protocol]]


async def listed(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    data = (await client.get("/api/server/workers")).json()["data"]
    return [(w["model_name"], w["req_url_template"]) for w in data]


async def answers_on_every_route(
    client: httpx.AsyncClient, sdk: openai.AsyncOpenAI, worker: ProtocolWorker
) -> None:
    said = f"{worker.name} says hi there"
    seed = await client.post(
        "/api/v1/chat/completions", json={"input": "hi there", "model_name": "m"}
    )
    assert seed.status_code == 200, seed.text
    assert seed.json()["result"] == said
    chat = await sdk.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi there"}]
    )
    assert chat.choices[0].message.content == said
    vectors = await sdk.embeddings.create(model="m", input=["abc"], encoding_format="float")
    assert vectors.data[0].embedding[0] == 3.0
    ollama_chat = await client.post(
        "/api/chat",
        json={"model": "m", "messages": [{"role": "user", "content": "hi there"}], "stream": False},
    )
    assert ollama_chat.status_code == 200, ollama_chat.text
    assert ollama_chat.json()["message"]["content"] == said


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
async def test_every_url_form_is_one_worker_that_answers_and_goes_offline_by_another(
    client: httpx.AsyncClient,
    gateway: Gateway,
    make_protocol_worker: ProtocolWorkerFactory,
    protocol: str,
) -> None:
    worker = await make_protocol_worker(protocol, name="srv")
    urls = forms(worker)
    async with async_client(gateway) as sdk:
        for i, url in enumerate(urls):
            reply = await register(
                client, {"model_name": "m", "preset": protocol, "req_url_template": url}
            )
            assert reply.status_code == 200, (url, reply.text)
            assert await listed(client) == [("m", worker.base_url)]
            before = worker.count
            await answers_on_every_route(client, sdk, worker)
            # Every call reached the worker at its own paths (none at .../chat/completions/...).
            assert worker.count == before + 4
            other = urls[(i + 1) % len(urls)]
            gone = await client.post(
                "/api/server/offline", json={"model_name": "m", "req_url_template": other}
            )
            assert gone.status_code == 200, (other, gone.text)
            assert await listed(client) == []


async def test_another_url_form_is_the_same_worker_not_a_second_one(
    client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    worker = await make_protocol_worker("openai")
    base = {"model_name": "m", "preset": "openai"}
    first = await register(client, {**base, "req_url_template": worker.base_url + "/"})
    again = await register(
        client, {**base, "req_url_template": worker.base_url + "/chat/completions"}
    )
    assert again.status_code == 409
    assert f"req_url_template={worker.base_url})" in again.json()["msg"]
    replaced = await register(
        client,
        {**base, "req_url_template": worker.base_url + "/models", "replace": True, "weight": 3},
    )
    assert replaced.status_code == 200
    assert replaced.json()["id"] == first.json()["id"]
    data = (await client.get("/api/server/workers")).json()["data"]
    assert [(w["req_url_template"], w["weight"]) for w in data] == [(worker.base_url, 3)]


async def test_heartbeat_by_another_url_form(
    client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    worker = await make_protocol_worker("ollama")
    body = {"model_name": "m", "preset": "ollama", "req_url_template": worker.url, "ttl_s": 30}
    assert (await register(client, body)).status_code == 200
    beat = await client.post(
        "/api/server/heartbeat",
        json={"model_name": "m", "req_url_template": f"{worker.url}/api/chat"},
    )
    assert beat.status_code == 200 and beat.json()["ttl_s"] == 30


@pytest.mark.parametrize(
    ("preset", "path", "said"),
    [
        (
            "ollama",
            "/v1",
            "its path ends in '/v1'; /v1 is Ollama's OpenAI-compatible API: "
            'register that with "preset": "openai"',
        ),
        ("ollama", "/v1/chat/completions", "or with this preset and the server's base URL"),
        ("openai", "/api/chat", 'that is an Ollama endpoint: register it with "preset": "ollama"'),
        ("openai", "/v1?api-version=1", "cannot carry a query string (?...) or a fragment"),
        ("ollama", "/#x", "cannot carry a query string (?...) or a fragment"),
    ],
)
async def test_a_url_that_cannot_be_right_for_the_preset_is_refused(
    client: httpx.AsyncClient, preset: str, path: str, said: str
) -> None:
    body = {"model_name": "m", "preset": preset, "req_url_template": "http://127.0.0.1:9" + path}
    reply = await register(client, body)
    assert reply.status_code == 422
    message = reply.json()["msg"]
    assert message.startswith("invalid register request: req_url_template: ")
    assert said in message
    assert await listed(client) == []
