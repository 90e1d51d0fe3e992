"""Access control: the admin token, inference API keys, their rate limits, and secrets."""

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway import Settings, create_app
from registry import EmbeddedRedis
from tests.conftest import Gateway, GatewayFactory, ProtocolWorkerFactory, WorkerFactory
from tests.gateway.test_health import until
from tests.gateway.test_openai_api import preset_registration
from tests.gateway.test_seed_api import seed_registration

ADMIN = "admin-token-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def closed_gateway(make_gateway: GatewayFactory, **extra: Any) -> Gateway:
    return await make_gateway(admin_token=ADMIN, require_api_keys=True, **extra)


async def create_key(client: httpx.AsyncClient, name: str = "team-a", **limits: Any) -> str:
    reply = await client.post(
        "/api/server/keys", json={"name": name, **limits}, headers=ADMIN_HEADERS
    )
    assert reply.status_code == 200, reply.text
    key: str = reply.json()["data"]["key"]
    return key


ADMIN_ROUTES = [
    ("POST", "/api/server/register", {"model_name": "m"}),
    ("GET", "/api/server/workers", None),
    ("POST", "/api/server/offline", {"model_name": "m", "req_url_template": "http://x/y"}),
    ("GET", "/api/server/presets", None),
    ("POST", "/api/server/keys", {"name": "k"}),
    ("GET", "/api/server/keys", None),
    ("DELETE", "/api/server/keys/0123456789abcdef", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_need_the_admin_token(
    make_gateway: GatewayFactory, method: str, path: str, body: Any
) -> None:
    gateway = await make_gateway(admin_token=ADMIN)
    async with gateway.client() as http:
        missing = await http.request(method, path, json=body)
        assert missing.status_code == 401, missing.text
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert missing.json()["code"] == "unauthorized"
        wrong = await http.request(method, path, json=body, headers=bearer("not-the-token"))
        assert wrong.status_code == 403, wrong.text
        basic = await http.request(method, path, json=body, headers={"Authorization": "Basic x"})
        assert basic.status_code == 401
        right = await http.request(method, path, json=body, headers=ADMIN_HEADERS)
        assert right.status_code not in (401, 403), right.text
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_refused_registration_changes_nothing(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(admin_token=ADMIN)
    worker = await make_worker()
    async with gateway.client() as http:
        reply = await http.post(
            "/api/server/register", json=seed_registration("m", worker), headers=bearer("nope")
        )
        assert reply.status_code == 403
        listing = await http.get("/api/server/workers", headers=ADMIN_HEADERS)
        assert listing.json()["data"] == []


async def test_api_keys_are_created_listed_and_revoked(
    make_gateway: GatewayFactory, redis: Redis, key_prefix: str
) -> None:
    gateway = await closed_gateway(make_gateway)
    async with gateway.client() as http:
        created = await http.post(
            "/api/server/keys",
            json={"name": "team-a", "requests_per_minute": 10, "max_concurrent": 2},
            headers=ADMIN_HEADERS,
        )
        assert created.status_code == 200, created.text
        data = created.json()["data"]
        secret = data["key"]
        assert secret.startswith("gwk-") and len(secret) > 40
        listing = (await http.get("/api/server/keys", headers=ADMIN_HEADERS)).json()["data"]
        assert len(listing) == 1
        spend = listing[0].pop("spend")
        assert listing == [
            {
                "id": data["id"],
                "name": "team-a",
                "created_at": data["created_at"],
                "requests_per_minute": 10,
                "max_concurrent": 2,
                "tokens_per_minute": None,
                "tokens_per_day": None,
                "budget": None,
                "budget_period": "month",
            }
        ]
        assert spend["tokens_today"] == 0 and spend["cost_this_period"] == 0
        # Redis holds the hash, never the key: dump every key of this gateway's registry.
        dump = b"".join([await _value(redis, key) async for key in redis.scan_iter(match="*")])
        assert data["id"].encode() in dump
        assert secret.encode() not in dump

        revoked = await http.delete(f"/api/server/keys/{data['id']}", headers=ADMIN_HEADERS)
        assert revoked.status_code == 200, revoked.text
        assert (await http.get("/api/server/keys", headers=ADMIN_HEADERS)).json()["data"] == []
        again = await http.delete(f"/api/server/keys/{data['id']}", headers=ADMIN_HEADERS)
        assert again.status_code == 404
        assert again.json()["code"] == "api_key_not_found"


async def test_inference_needs_a_live_key_on_every_api(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await closed_gateway(make_gateway)
    worker = await make_worker(name="w")
    async with gateway.client() as http:
        await http.post(
            "/api/server/register", json=seed_registration("m", worker), headers=ADMIN_HEADERS
        )
        key = await create_key(http)
        msgs = [{"role": "user", "content": "hi"}]
        calls = [
            ("POST", "/api/v1/chat/completions", {"input": "hi", "model_name": "m"}),
            ("POST", "/v1/chat/completions", {"model": "m", "messages": msgs}),
            ("POST", "/v1/completions", {"model": "m", "prompt": "hi"}),
            ("GET", "/v1/models", None),
            ("POST", "/api/chat", {"model": "m", "messages": msgs, "stream": False}),
            ("POST", "/api/generate", {"model": "m", "prompt": "hi", "stream": False}),
            ("GET", "/api/tags", None),
        ]  # fmt: skip
        for method, path, body in calls:
            missing = await http.request(method, path, json=body)
            assert missing.status_code == 401, (path, missing.text)
            wrong = await http.request(method, path, json=body, headers=bearer("gwk-wrong"))
            assert wrong.status_code == 403, (path, wrong.text)
            # The admin token is not an API key.
            admin = await http.request(method, path, json=body, headers=ADMIN_HEADERS)
            assert admin.status_code == 403, (path, admin.text)
            good = await http.request(method, path, json=body, headers=bearer(key))
            assert good.status_code == 200, (path, good.text)
        assert (await http.get("/api/version")).status_code == 200
    assert worker.count == 5


async def test_error_shapes_of_refusals_follow_the_route_family(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await closed_gateway(make_gateway)
    async with gateway.client() as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        reply = await http.post("/v1/chat/completions", json=body)
        assert reply.json()["error"]["type"] == "authentication_error"
        reply = await http.post("/api/chat", json=body)
        assert isinstance(reply.json()["error"], str)
        reply = await http.post("/api/v1/chat/completions", json={"input": "x", "model_name": "m"})
        assert reply.json()["success"] is False


async def test_openai_and_ollama_clients_send_their_key(
    make_gateway: GatewayFactory, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    gateway = await closed_gateway(make_gateway)
    vllm = await make_protocol_worker("openai", name="vllm")
    async with gateway.client() as http:
        reply = await http.post(
            "/api/server/register", json=preset_registration("qwen", vllm), headers=ADMIN_HEADERS
        )
        assert reply.status_code == 200, reply.text
        key = await create_key(http)
    msgs: Any = [{"role": "user", "content": "hello"}]
    async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as good:
        answer = await good.chat.completions.create(model="qwen", messages=msgs)
        assert answer.choices[0].message.content == "vllm says hello"
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="gwk-bad", max_retries=0
    ) as bad:
        with pytest.raises(openai.PermissionDeniedError):
            await bad.chat.completions.create(model="qwen", messages=msgs)
    client = ollama.AsyncClient(host=gateway.url, headers=bearer(key))
    anonymous = ollama.AsyncClient(host=gateway.url)
    try:
        chat = await client.chat(model="qwen", messages=msgs)
        assert chat.message.content == "vllm says hello"
        with pytest.raises(ollama.ResponseError) as refused:
            await anonymous.chat(model="qwen", messages=msgs)
        assert refused.value.status_code == 401
    finally:
        await client.close()
        await anonymous.close()


async def test_revocation_reaches_another_replica_within_the_cache_ttl(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first = await closed_gateway(make_gateway)
    # A replica whose cache keeps answers for a very short time, so the test does not wait.
    second = await closed_gateway(make_gateway, api_key_cache_ttl_s=0.2)
    worker = await make_worker()
    body = {"input": "hi", "model_name": "m"}
    async with first.client() as one, second.client() as two:
        await one.post(
            "/api/server/register", json=seed_registration("m", worker), headers=ADMIN_HEADERS
        )
        key = await create_key(one)
        assert (
            await two.post("/api/v1/chat/completions", json=body, headers=bearer(key))
        ).status_code == 200
        key_id = (await one.get("/api/server/keys", headers=ADMIN_HEADERS)).json()["data"][0]["id"]
        await one.delete(f"/api/server/keys/{key_id}", headers=ADMIN_HEADERS)
        # The process that revoked it refuses the key at once.
        assert (
            await one.post("/api/v1/chat/completions", json=body, headers=bearer(key))
        ).status_code == 403
        for _ in range(100):
            reply = await two.post("/api/v1/chat/completions", json=body, headers=bearer(key))
            if reply.status_code == 403:
                break
            await asyncio.sleep(0.05)
        assert reply.status_code == 403


async def test_keys_seen_recently_keep_working_while_redis_is_down(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    server.start()
    try:
        # Answers trusted for 0.2 s, and for 4 s more while Redis cannot be asked.
        gateway = await closed_gateway(
            make_gateway, redis_url=server.url, api_key_cache_ttl_s=0.2, api_key_cache_grace_s=4
        )
        worker = await make_worker(name="w")
        body = {"input": "hi", "model_name": "m"}
        async with gateway.client() as http:

            async def chat(key: str) -> httpx.Response:
                return await http.post("/api/v1/chat/completions", json=body, headers=bearer(key))

            await http.post(
                "/api/server/register", json=seed_registration("m", worker), headers=ADMIN_HEADERS
            )
            key = await create_key(http)
            assert (await chat(key)).json()["result"] == "w: hi"
            assert (await chat("gwk-never-issued")).status_code == 403

            server.stop()
            await asyncio.sleep(0.5)  # past the cache's TTL: every lookup now fails
            # The key in use goes on working, and the unknown one stays refused.
            assert (await chat(key)).json()["result"] == "w: hi"
            assert (await chat(key)).json()["result"] == "w: hi"
            assert (await chat("gwk-never-issued")).status_code == 403
            # A key this process never saw cannot be checked: 503 saying why, not a 403.
            unseen = await chat("gwk-not-seen-here")
            assert unseen.status_code == 503
            assert unseen.json()["msg"].startswith("the API key cannot be checked")
            assert unseen.headers["Retry-After"] == "1"
            scrape = (await http.get("/metrics")).text
            assert 'gateway_redis_errors_total{component="api_key"}' in scrape

            # The grace is bounded: past it the key cannot be checked either.
            async def refused() -> bool:
                return (await chat(key)).status_code == 503

            await until(refused, timeout_s=20)
            assert (await chat(key)).json()["msg"].startswith("the API key cannot be checked")
    finally:
        server.stop()


async def test_rate_limit_is_shared_by_replicas(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first = await closed_gateway(make_gateway)
    second = await closed_gateway(make_gateway)
    worker = await make_worker()
    body = {"input": "hi", "model_name": "m"}
    async with first.client() as one, second.client() as two:
        await one.post(
            "/api/server/register", json=seed_registration("m", worker), headers=ADMIN_HEADERS
        )
        key = await create_key(one, requests_per_minute=4)
        other = await create_key(one, name="team-b", requests_per_minute=4)
        statuses = []
        for i in range(6):
            http = one if i % 2 == 0 else two
            reply = await http.post("/api/v1/chat/completions", json=body, headers=bearer(key))
            statuses.append(reply.status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert int(reply.headers["Retry-After"]) >= 1
        assert reply.json()["code"] == "rate_limited"
        assert "4 requests per minute" in reply.json()["msg"]
        # Another key has its own budget.
        reply = await two.post("/api/v1/chat/completions", json=body, headers=bearer(other))
        assert reply.status_code == 200
        openai_body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        refused = await two.post("/v1/chat/completions", json=openai_body, headers=bearer(key))
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
    assert worker.count == 5


async def test_concurrent_requests_are_capped_per_key_across_replicas(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    first = await closed_gateway(make_gateway)
    second = await closed_gateway(make_gateway)
    worker = await make_worker(delay_s=0.5)
    body = {"input": "hi", "model_name": "m"}
    async with first.client() as one, second.client() as two:
        await one.post(
            "/api/server/register", json=seed_registration("m", worker), headers=ADMIN_HEADERS
        )
        key = await create_key(one, max_concurrent=2)

        async def call(http: httpx.AsyncClient) -> httpx.Response:
            return await http.post("/api/v1/chat/completions", json=body, headers=bearer(key))

        slow = [asyncio.create_task(call(one)), asyncio.create_task(call(two))]
        for _ in range(500):
            if worker.count == 2:
                break
            await asyncio.sleep(0.01)
        third = await call(one)
        assert third.status_code == 429
        assert third.headers["Retry-After"] == "1"
        assert "max_concurrent" in third.json()["msg"]
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
        # The slots were given back when the answers ended.
        worker.delay_s = 0
        assert (await call(two)).status_code == 200


async def test_open_gateway_says_so_at_start(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.app"):
        await make_gateway()
    open_lines = [r for r in caplog.records if "access control is off" in r.getMessage()]
    assert len(open_lines) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.app"):
        await make_gateway(admin_token=ADMIN, require_api_keys=True)
    assert not [r for r in caplog.records if "access control is off" in r.getMessage()]


async def test_client_authorization_never_reaches_a_worker(
    make_gateway: GatewayFactory,
    make_worker: WorkerFactory,
    make_protocol_worker: ProtocolWorkerFactory,
) -> None:
    """Neither in open mode nor with keys: workers see only the headers they were given."""
    for closed in (False, True):
        gateway = await (closed_gateway(make_gateway) if closed else make_gateway())
        custom = await make_worker(name="custom")
        vllm = await make_protocol_worker("openai", name="vllm")
        olla = await make_protocol_worker("ollama", name="olla")
        async with gateway.client() as http:
            for body in (
                seed_registration(f"custom{closed}", custom, header={"X-Worker-Key": "secret"}),
                preset_registration(
                    f"qwen{closed}", vllm, header={"Authorization": "Bearer worker-secret"}
                ),
                preset_registration(f"llama{closed}", olla),
            ):
                reply = await http.post("/api/server/register", json=body, headers=ADMIN_HEADERS)
                assert reply.status_code == 200, reply.text
            client_secret = await create_key(http) if closed else "client-secret-xyz"
            headers = {
                "Authorization": f"Bearer {client_secret}",
                "Cookie": "session=client-cookie",
                "X-Api-Key": "client-api-key",
                "Proxy-Authorization": "Basic client-proxy",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "hop-by-hop",
            }
            msgs = [{"role": "user", "content": "hi"}]
            for model in (f"custom{closed}", f"qwen{closed}", f"llama{closed}"):
                for path, body in (
                    ("/v1/chat/completions", {"model": model, "messages": msgs}),
                    ("/v1/chat/completions", {"model": model, "messages": msgs, "stream": True}),
                    ("/api/chat", {"model": model, "messages": msgs, "stream": False}),
                    ("/api/chat", {"model": model, "messages": msgs}),
                ):
                    reply = await http.post(path, json=body, headers=headers)
                    assert reply.status_code == 200, (model, path, reply.text)
            reply = await http.post(
                "/api/v1/chat/completions",
                json={"input": "x", "model_name": f"custom{closed}"},
                headers=headers,
            )
            assert reply.status_code == 200
        received = custom.received + vllm.received + olla.received
        assert len(received) == 13
        for sent in received:
            lowered = {name.lower(): value for name, value in sent.headers.items()}
            joined = repr(lowered)
            for leaked in (
                "client-secret",
                client_secret,
                "client-cookie",
                "client-api-key",
                "client-proxy",
                "hop-by-hop",
            ):
                assert leaked not in joined, sent
            assert "cookie" not in lowered and "x-api-key" not in lowered
        assert vllm.received[0].headers["Authorization"] == "Bearer worker-secret"
        assert custom.received[0].headers["X-Worker-Key"] == "secret"
        assert "Authorization" not in olla.received[0].headers


async def test_garbage_credentials_get_401_or_403(make_gateway: GatewayFactory) -> None:
    gateway = await closed_gateway(make_gateway)
    values = [
        b"", b"Bearer", b"Bearer  \tx", b"bearer x", b"BEARER " + ADMIN.encode(), b"Basic Zm9v",
        b"Bearer \xff\xfe", b"Bearer " + b"x" * 6000, b"Bearer a b c", b"Token x", b"Bearer\tx",
        "Bearer é漢".encode(), b"Bearer " + ADMIN.encode() + b"x", b"Bearer " + ADMIN[:-1].encode(),
    ]  # fmt: skip
    async with gateway.client() as http:
        for value in values:
            for method, path in (
                ("GET", "/api/server/workers"),
                ("POST", "/v1/chat/completions"),
                ("GET", "/api/tags"),
            ):
                reply = await http.request(method, path, headers={"Authorization": value}, json={})
                expected = (
                    {401, 403, 200} if value.startswith(b"BEARER " + ADMIN.encode()) else {401, 403}
                )
                assert reply.status_code in expected, (value[:30], path, reply.text)


async def test_a_route_missing_from_the_catalogue_is_an_admin_route(
    redis_url: str, key_prefix: str, tmp_path: Path, redis: Redis
) -> None:
    """A route added without declaring its access is closed, not open."""
    settings = Settings(
        port=0, redis_url=redis_url, key_prefix=key_prefix, data_dir=tmp_path, admin_token=ADMIN
    )
    app = create_app(settings)

    async def undeclared(request: web.Request) -> web.Response:
        return web.json_response({"success": True})

    app.router.add_post("/api/server/undeclared", undeclared)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.addresses[0][1]}") as http:
            assert (await http.post("/api/server/undeclared")).status_code == 401
            reply = await http.post("/api/server/undeclared", headers=ADMIN_HEADERS)
            assert reply.status_code == 200
    finally:
        await runner.cleanup()


async def _value(redis: Redis, key: bytes) -> bytes:
    """Everything stored under `key`, whatever its type, as bytes."""
    kind = (await redis.type(key)).decode()
    if kind == "hash":
        return b"".join(k + v for k, v in (await redis.hgetall(key)).items())
    if kind == "string":
        return bytes(await redis.get(key) or b"")
    if kind == "set":
        return b"".join(await redis.smembers(key))
    if kind == "zset":
        return b"".join(await redis.zrange(key, 0, -1))
    return b""
