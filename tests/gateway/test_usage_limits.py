"""Token limits and money budgets per API key, across gateways; prices; the usage API.

Every answer of the fake model servers costs 4 prompt tokens and 6 completion tokens (words
asked and answered: "tell me a story" -> "<model> says tell me a story").
"""

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.accounting import ACCOUNTANT
from gateway.state import API_KEYS, ROUTER
from tests.conftest import Gateway, GatewayFactory
from tests.gateway.test_auth import ADMIN, ADMIN_HEADERS, bearer, create_key
from tests.gateway.test_health import until
from tests.gateway.test_usage import settle
from tests.model_server import ModelServer

PROMPT = "tell me a story"
TOKENS = 4 + 6  # per answer


def chat(model: str = "m", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}


@pytest.fixture
async def server() -> AsyncIterator[ModelServer]:
    found = ModelServer(protocol="openai", name="m")
    await found.start()
    yield found
    await found.stop()


async def register(client: httpx.AsyncClient, server: ModelServer, model: str = "m") -> None:
    body = {"model_name": model, "req_url_template": server.base_url, "preset": "openai"}
    reply = await client.post("/api/server/register", json=body, headers=ADMIN_HEADERS)
    assert reply.status_code == 200, reply.text


async def closed(make_gateway: GatewayFactory, **extra: Any) -> Gateway:
    return await make_gateway(admin_token=ADMIN, require_api_keys=True, **extra)


async def key_listing(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    reply = await client.get("/api/server/keys", headers=ADMIN_HEADERS)
    assert reply.status_code == 200, reply.text
    return {entry["name"]: entry for entry in reply.json()["data"]}


async def test_tokens_per_minute_refuses_once_spent_with_retry_after(
    make_gateway: GatewayFactory, server: ModelServer
) -> None:
    gateway = await closed(make_gateway)
    async with gateway.client() as http:
        await register(http, server)
        key = await create_key(http, "team-a", tokens_per_minute=TOKENS + 1)
        for _ in range(2):  # the second is admitted: 10 of 11 were spent when it came
            reply = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
            assert reply.status_code == 200, reply.text
        refused = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["type"] == "rate_limit_error"
        assert "tokens per minute" in error["message"]
        ollama = await http.post("/api/chat", json=chat(), headers=bearer(key))
        assert ollama.status_code == 429
        assert "tokens per minute" in ollama.json()["error"]  # Ollama's shape
        # Listings are not inference that spends tokens: still answered.
        assert (await http.get("/v1/models", headers=bearer(key))).status_code == 200
        me = await http.get("/api/server/usage/me", headers=bearer(key))
        assert me.status_code == 200, me.text
        spend = (await key_listing(http))["team-a"]["spend"]
        metrics = (await http.get("/metrics")).text
    assert spend["tokens_last_minute"] >= 2 * TOKENS - 1 and spend["tokens_today"] == 2 * TOKENS
    assert me.json()["key"]["spend"]["tokens_today"] == 2 * TOKENS
    assert me.json()["key"]["tokens_per_minute"] == TOKENS + 1
    assert 'gateway_rate_limited_total{limit="tokens_per_minute"} 2.0' in metrics
    assert len(server.received) == 2


async def test_tokens_per_day_hold_across_two_gateways_under_concurrent_load(
    make_gateway: GatewayFactory, server: ModelServer
) -> None:
    limit, clients, tries = 200, 8, 40
    first, second = await closed(make_gateway), await closed(make_gateway)
    async with first.client() as one, second.client() as two:
        await register(one, server)
        await until(lambda: second.app[ROUTER].pool("m") is not None)
        key = await create_key(one, "team-a", tokens_per_day=limit)
        other = await create_key(one, "team-b")
        answered: list[int] = []

        async def load(http: httpx.AsyncClient, n: int) -> None:
            for i in range(tries):
                reply = await http.post(
                    "/v1/chat/completions", json=chat(stream=(n + i) % 2 == 0), headers=bearer(key)
                )
                if reply.status_code == 429:
                    assert reply.json()["error"]["code"] == "rate_limited"
                    return
                assert reply.status_code == 200, reply.text
                answered.append(n)

        async def unlimited(http: httpx.AsyncClient) -> None:
            for _ in range(10):
                reply = await http.post("/v1/chat/completions", json=chat(), headers=bearer(other))
                assert reply.status_code == 200, reply.text

        await asyncio.gather(*(load((one, two)[n % 2], n) for n in range(clients)), unlimited(two))
        spent = (await key_listing(two))["team-a"]["spend"]["tokens_today"]
        await settle(first, second)
        report = (await two.get("/api/server/usage", headers=ADMIN_HEADERS)).json()
    by_key = {row["key_name"]: row for row in report["data"]}
    # Every answer was charged; admitted ones only while under the limit, so the overspend is
    # at most what the requests in flight (one per client) used.
    assert spent == len(answered) * TOKENS
    assert limit <= spent <= limit + clients * TOKENS
    assert by_key["team-a"]["total_tokens"] == spent
    assert by_key["team-b"]["total_tokens"] == 10 * TOKENS
    assert len(server.received) == len(answered) + 10


async def test_a_budget_refuses_with_429_once_spent_at_the_configured_price(
    make_gateway: GatewayFactory, server: ModelServer
) -> None:
    # One unit per prompt token and two per completion token: 4 + 12 = 16 an answer.
    prices = {"m": {"prompt": 1_000_000, "completion": 2_000_000}}
    gateway = await closed(make_gateway, prices=prices)
    async with gateway.client() as http:
        await register(http, server)
        key = await create_key(http, "team-a", budget=40, budget_period="day")
        for _ in range(3):  # 0, 16, 32 spent when each came: all under 40
            reply = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
            assert reply.status_code == 200, reply.text
        refused = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        seed = await http.post(
            "/api/v1/chat/completions",
            json={"input": PROMPT, "model_name": "m"},
            headers=bearer(key),
        )
        spend = (await key_listing(http))["team-a"]["spend"]
        await settle(gateway)
        report = (await http.get("/api/server/usage", headers=ADMIN_HEADERS)).json()
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "budget of 40" in error["message"]
    now = datetime.datetime.now(datetime.UTC)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0)
    assert abs(int(refused.headers["Retry-After"]) - (midnight - now).total_seconds()) < 120
    assert seed.status_code == 429 and seed.json()["success"] is False
    assert spend["cost_this_period"] == 48 and spend["period"] == "day"
    assert report["total"]["cost"] == 48


async def test_prices_set_through_the_api_win_over_the_config_and_go_back(
    make_gateway: GatewayFactory, server: ModelServer
) -> None:
    gateway = await make_gateway(prices={"m": {"prompt": 1.0, "completion": 1.0}})
    async with gateway.client() as http:
        await register(http, server)
        listed = (await http.get("/api/server/prices")).json()["data"]
        assert listed == [
            {"model": "m", "prompt": 1.0, "completion": 1.0, "cached": None, "source": "config"}
        ]
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
        price = {"model": "m", "prompt": 1_000_000, "completion": 0}
        assert (await http.post("/api/server/prices", json=price)).status_code == 200
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
        removed = await http.delete("/api/server/prices", params={"model": "m"})
        assert removed.status_code == 200 and "config file's price" in removed.json()["msg"]
        again = await http.delete("/api/server/prices", params={"model": "m"})
        assert again.status_code == 404
        bad = await http.post("/api/server/prices", json={"model": "m", "prompt": -1})
        assert bad.status_code == 422
        await settle(gateway)
        report = (await http.get("/api/server/usage")).json()
    # 10 tokens at 1 per million, then 4 prompt tokens at 1 each.
    assert report["total"]["cost"] == pytest.approx(4 + 10e-6)


async def test_a_price_set_in_one_gateway_is_used_by_the_other(
    make_gateway: GatewayFactory, server: ModelServer
) -> None:
    first, second = await make_gateway(), await make_gateway()
    async with first.client() as one, second.client() as two:
        await register(one, server)
        price = {"model": "m", "prompt": 1_000_000, "completion": 1_000_000}
        assert (await one.post("/api/server/prices", json=price)).status_code == 200
        await until(lambda: second.app[ROUTER].pool("m") is not None)
        book = second.app[ACCOUNTANT].prices
        await until(lambda: book.price("m") is not None)
        assert (await two.post("/v1/chat/completions", json=chat())).status_code == 200
        await settle(first, second)
        report = (await one.get("/api/server/usage")).json()
    assert report["total"]["cost"] == TOKENS


async def test_the_usage_api_filters_groups_and_says_its_range(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await closed(make_gateway)
    servers = [ModelServer(protocol="openai", name=name) for name in ("x", "y")]
    for found in servers:
        await found.start()
    try:
        async with gateway.client() as http:
            for name, found in zip(("x", "y"), servers, strict=True):
                await register(http, found, name)
            a = await create_key(http, "team-a")
            b = await create_key(http, "team-b")
            for key, model, times in ((a, "x", 2), (a, "y", 1), (b, "x", 3)):
                for _ in range(times):
                    reply = await http.post(
                        "/v1/chat/completions", json=chat(model), headers=bearer(key)
                    )
                    assert reply.status_code == 200, reply.text
            await settle(gateway)
            ids = {name: entry["id"] for name, entry in (await key_listing(http)).items()}

            async def get(**params: Any) -> httpx.Response:
                return await http.get("/api/server/usage", params=params, headers=ADMIN_HEADERS)

            by_key_model = (await get()).json()
            only_x = (await get(model="x", group_by="key")).json()
            of_a = (await get(key=ids["team-a"], group_by="model")).json()
            hourly = (await get(group_by="hour")).json()
            since = int(time.time()) + 3600
            future = (await get(since=since, until=since + 60)).json()
            iso = (await get(since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z")).json()
            wrong = [
                await get(group_by="colour"),
                await get(since="yesterday"),
                await get(since=10, until=5),
                await get(group_by="hour,day"),
            ]
            mine = (await http.get("/api/server/usage/me", headers=bearer(b))).json()
            unkeyed = await http.get("/api/server/usage/me")
            admin_only = await http.get("/api/server/usage", headers=bearer(a))
    finally:
        for found in servers:
            await found.stop()

    def rows(report: dict[str, Any], *columns: str) -> dict[tuple[Any, ...], int]:
        return {tuple(r[c] for c in columns): r["requests"] for r in report["data"]}

    assert rows(by_key_model, "key_name", "model") == {
        ("team-a", "x"): 2,
        ("team-a", "y"): 1,
        ("team-b", "x"): 3,
    }
    assert by_key_model["group_by"] == ["key", "model"]
    assert by_key_model["total"]["total_tokens"] == 6 * TOKENS
    assert rows(only_x, "key_name") == {("team-a",): 2, ("team-b",): 3}
    assert rows(of_a, "model") == {("x",): 2, ("y",): 1}
    (hour,) = hourly["data"]
    assert hour["requests"] == 6 and hour["start"].endswith(":00:00Z")
    assert future["data"] == [] and future["total"]["requests"] == 0
    assert iso["data"] == []
    for reply in wrong:
        assert reply.status_code == 422, reply.text
        assert reply.json()["success"] is False
    assert rows(mine, "model") == {("x",): 3}
    assert mine["key"]["name"] == "team-b" and "sha256" not in mine["key"]
    assert unkeyed.status_code == 401
    assert admin_only.status_code == 403


async def test_revoking_a_key_forgets_its_spend(
    make_gateway: GatewayFactory, server: ModelServer, redis: Any
) -> None:
    gateway = await closed(make_gateway)
    async with gateway.client() as http:
        await register(http, server)
        key = await create_key(http, "team-a", tokens_per_day=1000)
        assert (
            await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        ).status_code == 200
        key_id = (await key_listing(http))["team-a"]["id"]
        spend_key = gateway.app[API_KEYS].keys.spend(key_id)
        assert await redis.exists(spend_key)
        assert (
            await http.delete(f"/api/server/keys/{key_id}", headers=ADMIN_HEADERS)
        ).status_code == 200
        assert not await redis.exists(spend_key)


@pytest.mark.parametrize(
    "limits",
    [
        {"tokens_per_minute": 0},
        {"tokens_per_day": True},
        {"budget": -1},
        {"budget": 5, "budget_period": "year"},
    ],
)
async def test_bad_limits_at_key_creation_are_refused(
    make_gateway: GatewayFactory, limits: dict[str, Any]
) -> None:
    gateway = await closed(make_gateway)
    async with gateway.client() as http:
        reply = await http.post(
            "/api/server/keys", json={"name": "k", **limits}, headers=ADMIN_HEADERS
        )
    assert reply.status_code == 422, reply.text
    assert next(iter(limits)) in reply.json()["msg"]
