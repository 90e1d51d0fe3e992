"""`"verify": true` at registration: the worker is called once, and refused unless it answers
as registered (its models list names the model, or its template's answer fits the extract)."""

from typing import Any

import httpx
import orjson

from tests.conftest import GatewayFactory, ProtocolWorkerFactory, WorkerFactory
from tests.gateway.test_request_path import RawFactory, make_raw, replying, sse  # noqa: F401 - fixture
from tests.gateway.test_seed_api import register, seed_registration
from tests.hostile import leaks

SECRET = "sk-live-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}


async def workers(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    listing: list[dict[str, Any]] = (await client.get("/api/server/workers")).json()["data"]
    return listing


async def test_a_preset_worker_that_lists_its_model_is_registered(
    client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    vllm = await make_protocol_worker("openai", models=["other", "Qwen/Qwen3-4B"])
    body = {
        "model_name": "qwen",
        "upstream_model": "Qwen/Qwen3-4B",
        "preset": "openai",
        "req_url_template": f"{vllm.base_url}/chat/completions",
        "header": AUTH,
        "verify": True,
    }
    reply = await register(client, body)
    assert reply.status_code == 200, reply.text
    [asked] = vllm.received
    assert (asked.method, asked.path) == ("GET", "/v1/models")
    assert asked.headers["Authorization"] == AUTH["Authorization"]
    [entry] = await workers(client)
    assert entry["req_url_template"] == vllm.base_url
    assert "verify" not in entry  # how it was registered is not part of the record
    chat = await client.post("/api/v1/chat/completions", json={"input": "x", "model_name": "qwen"})
    assert chat.json()["result"] == "w says x"


async def test_an_ollama_model_without_a_tag_is_its_latest(
    client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    ollama = await make_protocol_worker("ollama", models=["llama3.2:latest", "qwen3:4b"])
    base = {"preset": "ollama", "req_url_template": f"{ollama.url}/api/chat", "verify": True}
    for model in ("llama3.2", "llama3.2:latest", "qwen3:4b"):
        assert (await register(client, {**base, "model_name": model})).status_code == 200
    assert [(r.method, r.path) for r in ollama.received] == [("GET", "/api/tags")] * 3
    refused = await register(client, {**base, "model_name": "qwen3"})  # qwen3:latest is not there
    assert refused.status_code == 422


async def test_a_model_the_worker_does_not_serve_is_refused_with_what_it_serves(
    client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    vllm = await make_protocol_worker("openai", models=["Qwen/Qwen3-4B", "Qwen/Qwen3-8B"])
    body = {"model_name": "qwen", "preset": "openai", "req_url_template": vllm.base_url}
    reply = await register(client, {**body, "verify": True})
    assert reply.status_code == 422
    assert reply.json()["msg"] == (
        "verify: the worker does not serve the model 'qwen'; GET /v1/models lists "
        "'Qwen/Qwen3-4B', 'Qwen/Qwen3-8B'. Register the name the worker uses (as model_name, "
        "or as upstream_model to keep your own model_name)"
    )
    assert await workers(client) == []
    # Without verify, nothing is asked and the registration stands.
    assert (await register(client, body)).status_code == 200
    assert len(vllm.received) == 1


async def test_a_worker_that_cannot_be_reached_is_refused_with_502(
    client: httpx.AsyncClient, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    gone = await make_protocol_worker("ollama")
    await gone.stop()
    body = {"model_name": "m", "preset": "ollama", "req_url_template": gone.url, "verify": True}
    reply = await register(client, body)
    assert reply.status_code == 502
    assert reply.json()["code"] == "upstream_error"
    assert reply.json()["msg"].startswith("verify: could not reach the worker for GET /api/tags")
    assert await workers(client) == []


async def test_a_worker_that_does_not_answer_in_time_is_refused_with_504(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    slow = await make_worker(delay_s=30)
    reply = await register(client, seed_registration("m", slow, timeout_s=0.2, verify=True))
    assert reply.status_code == 504
    assert reply.json()["msg"].startswith("verify: POST /api/generate had no answer within 0.2s")
    assert await workers(client) == []


async def test_a_template_worker_is_sent_a_short_prompt_and_its_answer_extracted(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(name="seed")
    reply = await register(client, seed_registration("m", worker, verify=True))
    assert reply.status_code == 200, reply.text
    assert worker.received[0].json() == {"input": "ping", "model_name": "m"}


async def test_a_template_whose_extract_does_not_fit_the_answer_is_refused(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(name="seed")
    body = seed_registration("m", worker, response_extract="choices[].text", verify=True)
    reply = await register(client, body)
    assert reply.status_code == 422
    message = reply.json()["msg"]
    assert message.startswith("verify: the worker's answer to the prompt 'ping' does not fit")
    assert "'choices'" in message and "fix response_extract" in message
    assert await workers(client) == []


async def test_a_streaming_template_is_checked_chunk_by_chunk(
    client: httpx.AsyncClient,
    make_raw: RawFactory,  # noqa: F811
) -> None:
    worker = await make_raw(
        replying(200, sse({"t": "po"}, {"t": "ng"}) + b"data: [DONE]\n\n", content_type="x")
    )
    body = {
        "model_name": "m",
        "req_url_template": f"{worker.url}/gen",
        "body": {"q": "{USER_PROMPT}", "stream": "{STREAM}"},
        "is_stream": True,
        "stream_format": "sse",
        "verify": True,
    }
    assert (await register(client, {**body, "stream_extract": "t"})).status_code == 200
    assert orjson.loads(worker.received[0].body) == {"q": "ping", "stream": True}
    wrong = await register(client, {**body, "model_name": "n", "stream_extract": "text"})
    assert wrong.status_code == 422
    assert "no streamed chunk has a value at 'text'" in wrong.json()["msg"]
    assert "fix stream_extract" in wrong.json()["msg"]


async def test_a_worker_echoing_its_authorization_header_does_not_leak_it(
    client: httpx.AsyncClient,
    make_protocol_worker: ProtocolWorkerFactory,
    make_raw: RawFactory,  # noqa: F811
) -> None:
    refusing = await make_protocol_worker("openai", status=401)
    body = {"model_name": "m", "preset": "openai", "header": AUTH, "verify": True}
    reply = await register(client, {**body, "req_url_template": refusing.base_url})
    assert reply.status_code == 422
    message = reply.json()["msg"]
    assert message.startswith("verify: GET /v1/models answered HTTP 401:")
    assert "w refused ***" in message and "check the credentials in header" in message
    assert not leaks(message, SECRET)

    # A models list, or a template's answer, made of the key it was sent.
    def echo(request: Any) -> bytes:
        key = request.headers["authorization"]
        return orjson.dumps({"data": [{"id": key}], "answer": {"text": key}})

    echoing = await make_raw(replying(200, echo))
    listed = await register(client, {**body, "req_url_template": f"{echoing.url}/v1"})
    assert listed.status_code == 422
    assert "lists '***'" in listed.json()["msg"]
    template = {
        "model_name": "m",
        "req_url_template": f"{echoing.url}/gen",
        "body": {"q": "{USER_PROMPT}"},
        "header": AUTH,
        "response_extract": "answer.text.missing",
        "verify": True,
    }
    extracted = await register(client, template)
    assert extracted.status_code == 422
    for message in (listed.json()["msg"], extracted.json()["msg"]):
        assert not leaks(message, SECRET), message
    assert await workers(client) == []


async def test_redirects_are_not_followed_and_5xx_is_502(
    client: httpx.AsyncClient,
    make_protocol_worker: ProtocolWorkerFactory,
    make_raw: RawFactory,  # noqa: F811
) -> None:
    target = await make_protocol_worker("openai", models=["m"])
    moved = await make_raw(replying(302, b"", Location=f"{target.base_url}/models"))
    body = {"model_name": "m", "preset": "openai", "verify": True}
    reply = await register(client, {**body, "req_url_template": f"{moved.url}/v1"})
    assert reply.status_code == 422
    assert (
        "answered a redirect (HTTP 302), which the gateway does not follow" in reply.json()["msg"]
    )
    assert target.received == []
    failing = await make_protocol_worker("openai", status=503)
    reply = await register(client, {**body, "req_url_template": failing.base_url})
    assert reply.status_code == 502
    assert reply.json()["msg"].startswith("verify: GET /v1/models answered HTTP 503")


async def test_something_that_is_not_a_models_list_is_refused(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    seed_style = await make_worker()  # answers every path with the seed's own JSON
    body = {"model_name": "m", "preset": "ollama", "verify": True}
    reply = await register(client, {**body, "req_url_template": seed_style.url})
    assert reply.status_code == 422
    message = reply.json()["msg"]
    assert message.startswith("verify: GET /api/tags did not answer with a models list")
    assert "is req_url_template the base URL of a server speaking the 'ollama' protocol?" in message


async def test_verify_calls_no_worker_outside_the_allowlist(
    make_gateway: GatewayFactory, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    gateway = await make_gateway(worker_allowlist="10.0.0.0/8")
    worker = await make_protocol_worker("openai", models=["m"])
    body = {"model_name": "m", "preset": "openai", "req_url_template": worker.base_url}
    async with gateway.client() as http:
        reply = await register(http, {**body, "verify": True})
    assert reply.status_code == 422 and reply.json()["code"] == "worker_not_allowed"
    assert worker.received == []
