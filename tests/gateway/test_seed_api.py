"""The seed API end to end: register, list, chat, offline, exactly as its document shows."""

import asyncio
from typing import Any

import httpx

from tests.conftest import Gateway, GatewayFactory, WorkerFactory
from tests.workers import FakeWorker

SEED_EXTRACT = "data.items[].attributes.answer"


def seed_registration(model: str, worker: FakeWorker, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": model,
        "body": {"input": "{USER_PROMPT}", "model_name": "{MODEL_NAME}"},
        "req_url_template": f"{worker.url}/api/generate",
        "owner": "OperateGPT",
        "response_extract": SEED_EXTRACT,
    }
    body.update(extra)
    return body


async def register(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/server/register", json=body)


async def test_seed_document_flow(client: httpx.AsyncClient, make_worker: WorkerFactory) -> None:
    worker = await make_worker(name="proxy")

    reply = await register(client, seed_registration("proxyllm", worker))
    assert reply.status_code == 200
    assert reply.json()["success"] is True
    assert reply.json()["msg"] == "register LLM proxyllm succeed!"

    listing = (await client.get("/api/server/workers")).json()
    assert listing["success"] is True
    assert isinstance(listing["data"], list)
    assert [(w["model_name"], w["req_url_template"]) for w in listing["data"]] == [
        ("proxyllm", f"{worker.url}/api/generate")
    ]

    chat = await client.post(
        "/api/v1/chat/completions", json={"input": "who are you?", "model_name": "proxyllm"}
    )
    assert chat.status_code == 200
    assert chat.json() == {
        "success": True,
        "msg": "execute succeed",
        "result": "proxy: who are you?",
    }
    sent = worker.received[-1]
    assert sent.method == "POST" and sent.path == "/api/generate"
    assert sent.json() == {"input": "who are you?", "model_name": "proxyllm"}

    gone = await client.post(
        "/api/server/offline",
        json={"model_name": "proxyllm", "req_url_template": f"{worker.url}/api/generate"},
    )
    assert gone.status_code == 200
    assert gone.json() == {
        "success": True,
        "msg": f"remove llm worker(model_name=proxyllm, url={worker.url}/api/generate) succeed!",
    }
    assert (await client.get("/api/server/workers")).json()["data"] == []
    after = await client.post(
        "/api/v1/chat/completions", json={"input": "still there?", "model_name": "proxyllm"}
    )
    assert after.status_code == 404
    assert after.json()["success"] is False
    assert "proxyllm" in after.json()["msg"]


async def test_round_robin_is_exact_over_two_workers(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    first, second = await make_worker(name="a"), await make_worker(name="b")
    for worker in (first, second):
        assert (await register(client, seed_registration("m", worker))).status_code == 200

    answers = []
    for i in range(10):
        reply = await client.post(
            "/api/v1/chat/completions", json={"input": f"q{i}", "model_name": "m"}
        )
        answers.append(reply.json()["result"].split(":")[0])
    assert (first.count, second.count) == (5, 5)
    assert answers == ["a", "b"] * 5


async def test_models_have_separate_pools(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    one, two = await make_worker(name="one"), await make_worker(name="two")
    await register(client, seed_registration("model-1", one))
    await register(client, seed_registration("model-2", two))
    for _ in range(3):
        reply = await client.post(
            "/api/v1/chat/completions", json={"input": "x", "model_name": "model-2"}
        )
        assert reply.json()["result"] == "two: x"
    assert one.count == 0 and two.count == 3
    only = (await client.get("/api/server/workers", params={"model_name": "model-1"})).json()
    assert [w["model_name"] for w in only["data"]] == ["model-1"]


async def test_duplicate_registration_is_refused_and_replace_updates(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(name="w")
    body = seed_registration("dup", worker)
    assert (await register(client, body)).status_code == 200

    again = await register(client, body)
    assert again.status_code == 409
    assert again.json()["success"] is False
    assert "replace" in again.json()["msg"]
    assert len((await client.get("/api/server/workers")).json()["data"]) == 1

    changed = seed_registration("dup", worker, body={"input": "Q: {USER_PROMPT}"}, replace=True)
    assert (await register(client, changed)).status_code == 200
    listing = (await client.get("/api/server/workers")).json()["data"]
    assert len(listing) == 1
    assert listing[0]["body"] == {"input": "Q: {USER_PROMPT}"}
    await client.post("/api/v1/chat/completions", json={"input": "hi", "model_name": "dup"})
    assert worker.received[-1].json() == {"input": "Q: hi"}


async def test_concurrent_duplicate_registrations_create_one_worker(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker()
    body = seed_registration("race", worker)
    replies = await asyncio.gather(*(register(client, body) for _ in range(20)))
    assert sorted(r.status_code for r in replies) == [200] + [409] * 19
    assert len((await client.get("/api/server/workers")).json()["data"]) == 1


async def test_header_values_are_never_listed(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker()
    secret = "sk-very-secret-value"
    body = seed_registration("secret", worker, header={"Authorization": f"Bearer {secret}"})
    assert (await register(client, body)).status_code == 200
    listing = await client.get("/api/server/workers")
    assert secret not in listing.text
    assert listing.json()["data"][0]["header"] == {"Authorization": "***"}
    await client.post("/api/v1/chat/completions", json={"input": "x", "model_name": "secret"})
    assert worker.received[-1].headers["Authorization"] == f"Bearer {secret}"


async def test_get_worker_takes_the_prompt_in_the_url(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    worker = await make_worker(name="get")
    body = {
        "model_name": "getter",
        "req_type": "get",
        "req_url_template": f"{worker.url}/ask?q={{USER_PROMPT}}&m=<MODEL_NAME>",
        "response_extract": SEED_EXTRACT,
    }
    assert (await register(client, body)).status_code == 200
    prompt = 'a&b=c "quoted" #frag 100% ünï'
    reply = await client.post(
        "/api/v1/chat/completions", json={"input": prompt, "model_name": "getter"}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"] == f"get: {prompt}"
    assert worker.received[-1].method == "GET"
    assert worker.received[-1].query == {"q": prompt, "m": "getter"}
    assert worker.received[-1].body == b""


async def test_two_hundred_concurrent_requests_are_all_answered(
    client: httpx.AsyncClient, make_worker: WorkerFactory
) -> None:
    workers = [await make_worker(name=f"w{i}", delay_s=0.01) for i in range(3)]
    for worker in workers:
        await register(client, seed_registration("busy", worker))

    async def ask(i: int) -> str:
        reply = await client.post(
            "/api/v1/chat/completions", json={"input": f"prompt-{i}", "model_name": "busy"}
        )
        assert reply.status_code == 200, reply.text
        result: str = reply.json()["result"]
        return result

    results = await asyncio.gather(*(ask(i) for i in range(200)))
    assert sorted(r.split(": ")[1] for r in results) == sorted(f"prompt-{i}" for i in range(200))
    assert sum(w.count for w in workers) == 200
    assert sorted(w.count for w in workers) in ([66, 67, 67], [66, 66, 68], [67, 67, 66])


async def test_registration_is_visible_on_another_gateway(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first, second = await make_gateway(), await make_gateway()
    worker = await make_worker(name="shared")
    async with first.client() as one, second.client() as two:
        assert (await register(one, seed_registration("shared", worker))).status_code == 200
        listing: list[Any] = []
        for _ in range(100):
            listing = (await two.get("/api/server/workers")).json()["data"]
            if listing:
                break
            await asyncio.sleep(0.01)
        assert [w["model_name"] for w in listing] == ["shared"]
        reply = await two.post(
            "/api/v1/chat/completions", json={"input": "via two", "model_name": "shared"}
        )
        assert reply.json()["result"] == "shared: via two"

        key = {"model_name": "shared", "req_url_template": f"{worker.url}/api/generate"}
        assert (await two.post("/api/server/offline", json=key)).status_code == 200
        for _ in range(100):
            if not (await one.get("/api/server/workers")).json()["data"]:
                break
            await asyncio.sleep(0.01)
        assert (await one.get("/api/server/workers")).json()["data"] == []


async def test_readyz_reports_a_loaded_registry(gateway: Gateway) -> None:
    async with gateway.client() as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True
        assert (await http.get("/healthz")).json()["status"] == "ok"
