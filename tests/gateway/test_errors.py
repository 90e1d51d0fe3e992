"""Every error answers with an honest status, the seed's body shape and a useful message."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import EmbeddedRedis
from tests.conftest import Gateway, GatewayFactory, WorkerFactory
from tests.gateway.test_seed_api import register, seed_registration


async def chat(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/api/v1/chat/completions", json=body)


def assert_seed_error(reply: httpx.Response, status: int, *words: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["success"] is False
    for word in words:
        assert word in body["msg"], body["msg"]


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"input": "x", "model_name"', "application/json"),
        (b"\xff\xfe not utf-8", "application/json"),
        (b"input=x&model_name=y", "application/x-www-form-urlencoded"),
    ],
)
async def test_malformed_body_is_400(
    client: httpx.AsyncClient, raw: bytes, content_type: str
) -> None:
    reply = await client.post(
        "/api/v1/chat/completions", content=raw, headers={"Content-Type": content_type}
    )
    assert_seed_error(reply, 400, "not valid JSON")


async def test_empty_body_is_400(client: httpx.AsyncClient) -> None:
    assert_seed_error(await client.post("/api/server/register"), 400, "empty")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model_name": "m"}, ["input", "Field required"]),
        ({"input": 3, "model_name": "m"}, ["input"]),
        ({"input": "x", "model_name": "m", "temperature": 9}, ["temperature"]),
        ([1, 2], ["JSON object"]),
    ],
)
async def test_invalid_chat_request_is_422(
    client: httpx.AsyncClient, body: Any, words: list[str]
) -> None:
    reply = await client.post("/api/v1/chat/completions", json=body)
    assert_seed_error(reply, 422, *words)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"body": {"input": "no prompt here"}}, ["{USER_PROMPT}"]),
        ({"body": {"input": "{USER_PROMPT}", "t": "{TEMPERATURE}"}}, ["{TEMPERATURE}", "unknown"]),
        ({"req_url_template": "ftp://host/x"}, ["http://"]),
        ({"req_url_template": "not a url"}, ["req_url_template"]),
        ({"response_extract": "$.a[?(@.b =="}, ["response_extract"]),
        ({"response_extract": "a..b"}, ["response_extract"]),
        ({"req_type": "PUT"}, ["req_type"]),
        ({"header": {"Bad Header": "x"}}, ["header"]),
        ({"timeout_s": 0}, ["timeout_s"]),
        ({"reponse_extract": "typo"}, ["reponse_extract"]),
        ({"model_name": ""}, ["model_name"]),
    ],
)
async def test_invalid_registration_is_422_and_changes_nothing(
    client: httpx.AsyncClient, make_worker: WorkerFactory, change: dict[str, Any], words: list[str]
) -> None:
    worker = await make_worker()
    body = seed_registration("bad", worker)
    body.update(change)
    reply = await register(client, body)
    assert_seed_error(reply, 422, *words)
    assert (await client.get("/api/server/workers")).json()["data"] == []


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    assert_seed_error(
        await chat(client, input="x", model_name="ghost"), 404, "ghost", "nor for any other"
    )


async def test_unknown_model_404_names_the_registered_models_closest_first(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker()
    for model in ("mistral", "llama-3-8b", "qwen"):
        assert (await register(client, seed_registration(model, worker))).status_code == 200

    reply = await chat(client, input="x", model_name="llama3-8b")
    assert_seed_error(reply, 404, "'llama3-8b'", "did you mean 'llama-3-8b'?")
    listed = reply.json()["msg"].split("registered models: ")[1]
    assert listed.index("'llama-3-8b'") < listed.index("'mistral'") < listed.index("'qwen'")

    openai = await client.post(
        "/v1/chat/completions",
        json={"model": "QWEN", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert openai.status_code == 404
    assert "did you mean 'qwen'?" in openai.json()["error"]["message"]


async def test_unknown_model_404_caps_the_list_of_models(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker()
    for index in range(14):
        body = seed_registration(f"model-{index:02d}", worker)
        assert (await register(client, body)).status_code == 200
    reply = await chat(client, input="x", model_name="unrelated")
    assert_seed_error(reply, 404, "and 4 more")
    assert reply.json()["msg"].count("'model-") == 10


async def test_offline_of_unknown_worker_is_404(client: httpx.AsyncClient) -> None:
    reply = await client.post(
        "/api/server/offline", json={"model_name": "ghost", "req_url_template": "http://x/y"}
    )
    assert_seed_error(reply, 404, "ghost")


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_seed_error(await client.get("/api/server/nothing"), 404, "/api/server/nothing")
    assert_seed_error(await client.get("/api/v1/chat/completions"), 405, "GET")


async def test_oversized_request_is_413(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_request_bytes=2048)
    async with gateway.client() as http:
        reply = await chat(http, input="x" * 10_000, model_name="m")
    assert_seed_error(reply, 413)


async def test_worker_returning_non_json_is_502(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(raw=b"<html>oops</html>")
    await register(client, seed_registration("html", worker))
    assert_seed_error(await chat(client, input="x", model_name="html"), 502, "not JSON", "<html>")


async def test_missing_extract_path_is_502_naming_the_path(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(raw=b'{"data": {"items": []}}')
    await register(client, seed_registration("empty", worker))
    reply = await chat(client, input="x", model_name="empty")
    assert_seed_error(reply, 502, "data.items[].attributes.answer", "list of 0")


async def test_a_workers_400_is_the_clients_error_with_its_words(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(status=400)
    await register(client, seed_registration("picky", worker))
    reply = await chat(client, input="x", model_name="picky")
    assert_seed_error(reply, 400, "refused the request", "worker failed")
    assert worker.count == 1  # a 4xx is the worker's verdict on the request: not retried


async def test_a_worker_status_that_is_not_the_clients_fault_is_502(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(status=404)
    await register(client, seed_registration("lost", worker))
    assert_seed_error(await chat(client, input="x", model_name="lost"), 502, "HTTP 404")


async def test_hanging_worker_is_504_after_its_timeout(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(delay_s=5)
    await register(client, seed_registration("slow", worker, timeout_s=0.3))
    reply = await chat(client, input="x", model_name="slow")
    assert_seed_error(reply, 504, "0.3s")


async def test_unreachable_worker_is_502(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker()
    await register(client, seed_registration("down", worker))
    await worker.stop()
    assert_seed_error(await chat(client, input="x", model_name="down"), 502, "could not reach")


async def test_failed_attempt_moves_to_the_next_worker(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    broken, healthy = await make_worker(name="broken", status=500), await make_worker(name="ok")
    await register(client, seed_registration("pair", broken))
    await register(client, seed_registration("pair", healthy))
    results = [(await chat(client, input=str(i), model_name="pair")) for i in range(4)]
    assert [r.status_code for r in results] == [200] * 4
    assert all(r.json()["result"].startswith("ok:") for r in results)
    assert broken.count == 2 and healthy.count == 4


async def test_every_try_is_named_when_all_fail(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    first, second = await make_worker(status=503), await make_worker(status=500)
    await register(client, seed_registration("bad-pool", first))
    await register(client, seed_registration("bad-pool", second))
    reply = await chat(client, input="x", model_name="bad-pool")
    assert_seed_error(reply, 502, "all 2 tries failed", "HTTP 503", "HTTP 500")


async def test_registry_writes_fail_with_503_while_redis_is_down(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "own-redis", persist=True)
    server.start()
    try:
        gateway: Gateway = await make_gateway(redis_url=server.url)
        worker = await make_worker()
        async with gateway.client() as http:
            assert (await register(http, seed_registration("kept", worker))).status_code == 200
            server.stop()

            reply = await register(http, seed_registration("new", worker))
            assert_seed_error(reply, 503, "unreachable")
            assert reply.headers["Retry-After"] == "1"
            # Routing goes on from the last view.
            routed = await chat(http, input="still", model_name="kept")
            assert routed.status_code == 200
            assert routed.json()["result"] == "worker: still"
            for _ in range(100):
                ready = await http.get("/readyz")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert ready.status_code == 503
            assert "unreachable" in ready.json()["reason"]

            server.start()
            for _ in range(200):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert (await register(http, seed_registration("new", worker))).status_code == 200
            models = {
                w["model_name"] for w in (await http.get("/api/server/workers")).json()["data"]
            }
            assert models == {"kept", "new"}
    finally:
        server.stop()


async def test_worker_error_echoing_its_credentials_is_redacted(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    secret = "sk-live-0123456789abcdef"
    worker = await make_worker(status=401, raw=f'{{"error": "bad key Bearer {secret}"}}'.encode())
    body = seed_registration("leaky", worker, header={"Authorization": f"Bearer {secret}"})
    await register(client, body)
    reply = await chat(client, input="x", model_name="leaky")
    assert_seed_error(reply, 502, "HTTP 401", "***")
    assert secret not in reply.text
