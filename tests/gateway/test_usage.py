"""Usage accounting: what every route x worker kind used, as the worker reported it.

The model servers (tests/model_server.py) report usage by their rules (words asked and
answered). After each answer the gateway's buffer is flushed and the usage API must say
exactly what the worker said, on every route and worker kind, whole and streamed, passthrough
or translated; an OpenAI worker's stream is asked for usage even when the client did not ask,
and the client does not see the chunk it did not ask for. Workers that report nothing get an
estimate, marked as one in the usage records and the metrics.
"""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from gateway.accounting import ACCOUNTANT
from gateway.state import ROUTER
from tests.conftest import Gateway, GatewayFactory
from tests.gateway.test_auth import ADMIN, ADMIN_HEADERS, bearer, create_key
from tests.gateway.test_fidelity import registration, start_fleet
from tests.gateway.test_health import until
from tests.model_server import ModelServer, answer_words

KINDS = ("openai", "ollama", "anthropic", "template", "template-stream")
PROMPT = "tell me a story"
PROMPT_TOKENS = 4  # the fake counts words


@pytest.fixture
async def fleet(gateway: Gateway) -> AsyncIterator[dict[str, ModelServer]]:
    servers = await start_fleet(gateway, KINDS)
    yield servers
    for server in servers.values():
        await server.stop()


async def settle(*gateways: Gateway) -> None:
    """Write every gateway's buffered usage now (it would be within usage_flush_interval_ms)."""
    for gateway in gateways:
        assert await gateway.app[ACCOUNTANT].flush()


async def usage_report(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    reply = await client.get("/api/server/usage", params=params)
    assert reply.status_code == 200, reply.text
    report: dict[str, Any] = reply.json()
    return report


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT}]


# route -> (path, body for a model and stream flag)
ROUTES: dict[str, tuple[str, Any]] = {
    "openai-chat": (
        "/v1/chat/completions",
        lambda m, s: {"model": m, "messages": _messages(), "stream": s},
    ),
    "openai-completions": (
        "/v1/completions",
        lambda m, s: {"model": m, "prompt": PROMPT, "stream": s},
    ),
    "ollama-chat": ("/api/chat", lambda m, s: {"model": m, "messages": _messages(), "stream": s}),
    "ollama-generate": ("/api/generate", lambda m, s: {"model": m, "prompt": PROMPT, "stream": s}),
    "anthropic-messages": (
        "/v1/messages",
        lambda m, s: {"model": m, "max_tokens": 100, "messages": _messages(), "stream": s},
    ),
}
# Anthropic workers answer chats only.
CELLS = [
    (route, kind)
    for route in ROUTES
    for kind in KINDS
    if not (kind == "anthropic" and route in ("openai-completions", "ollama-generate"))
]


def stream_usage_chunks(text: str) -> list[Any]:
    """The usage objects a client saw in an OpenAI stream (SSE data lines)."""
    found = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            doc = orjson.loads(line[6:])
            if doc.get("usage") is not None:
                found.append(doc["usage"])
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("route", "kind"), CELLS)
async def test_usage_recorded_is_what_the_worker_reported(
    gateway: Gateway, fleet: dict[str, ModelServer], route: str, kind: str, stream: bool
) -> None:
    path, body = ROUTES[route]
    async with gateway.client() as client:
        reply = await client.post(path, json=body(kind, stream))
        assert reply.status_code == 200, reply.text
        if stream and route.startswith("openai"):
            assert stream_usage_chunks(reply.text) == []  # not asked for, not given
        await settle(gateway)
        report = await usage_report(client, model=kind, group_by="model,worker")
    (row,) = report["data"]
    assert row["model"] == kind
    assert row["worker"].startswith(fleet[kind].url)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1,
        PROMPT_TOKENS,
        len(answer_words(kind, PROMPT)),
    )
    assert row["estimated_requests"] == 0
    assert report["total"]["total_tokens"] == PROMPT_TOKENS + len(answer_words(kind, PROMPT))


@pytest.mark.parametrize("kind", KINDS)
async def test_the_seed_route_is_accounted_on_every_kind(
    gateway: Gateway, fleet: dict[str, ModelServer], kind: str
) -> None:
    async with gateway.client() as client:
        reply = await client.post(
            "/api/v1/chat/completions", json={"input": PROMPT, "model_name": kind}
        )
        assert reply.status_code == 200, reply.text
        await settle(gateway)
        (row,) = (await usage_report(client, model=kind))["data"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        PROMPT_TOKENS,
        len(answer_words(kind, PROMPT)),
    )


@pytest.mark.parametrize(
    ("kind", "path", "body"),
    [
        ("openai", "/v1/embeddings", {"input": ["a", "b", "c"]}),
        ("ollama", "/api/embed", {"input": ["a", "b", "c"]}),
        ("openai", "/api/embed", {"input": ["a", "b", "c"]}),
        ("ollama", "/v1/embeddings", {"input": ["a", "b", "c"]}),
    ],
)
async def test_embeddings_count_their_inputs_as_the_worker_did(
    gateway: Gateway, fleet: dict[str, ModelServer], kind: str, path: str, body: dict[str, Any]
) -> None:
    async with gateway.client() as client:
        reply = await client.post(path, json={"model": kind, **body})
        assert reply.status_code == 200, reply.text
        await settle(gateway)
        (row,) = (await usage_report(client, model=kind))["data"]
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated_requests"]) == (3, 0, 0)


async def test_an_openai_stream_is_asked_for_usage_and_the_extra_chunk_stripped(
    gateway: Gateway, fleet: dict[str, ModelServer]
) -> None:
    async with gateway.client() as client:
        plain = await client.post(
            "/v1/chat/completions",
            json={"model": "openai", "messages": _messages(), "stream": True},
        )
        sent = fleet["openai"].last
        assert sent["stream_options"] == {"include_usage": True}
        assert stream_usage_chunks(plain.text) == []
        events = [line for line in plain.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        words = answer_words("openai", PROMPT)
        assert len(events) == len(words) + 3  # role, words, finish, [DONE]: nothing else

        asked = await client.post(
            "/v1/chat/completions",
            json={
                "model": "openai",
                "messages": _messages(),
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert fleet["openai"].last["stream_options"] == {"include_usage": True}
        assert stream_usage_chunks(asked.text) == [
            {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": len(words),
                "total_tokens": PROMPT_TOKENS + len(words),
            }
        ]
        await settle(gateway)
        (row,) = (await usage_report(client, model="openai"))["data"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        2,
        2 * PROMPT_TOKENS,
        2 * len(words),
    )


async def test_other_stream_options_of_the_client_are_kept(
    gateway: Gateway, fleet: dict[str, ModelServer]
) -> None:
    async with gateway.client() as client:
        reply = await client.post(
            "/v1/chat/completions",
            json={
                "model": "openai",
                "messages": _messages(),
                "stream": True,
                "stream_options": {"continuous_usage_stats": False},
            },
        )
    assert reply.status_code == 200
    assert fleet["openai"].last["stream_options"] == {
        "continuous_usage_stats": False,
        "include_usage": True,
    }
    assert stream_usage_chunks(reply.text) == []


# Estimates.


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} with {labels}")


async def test_a_worker_without_usage_gets_an_estimate_marked_as_one(
    gateway: Gateway, fleet: dict[str, ModelServer]
) -> None:
    plain = registration("template", fleet["template"])
    plain.update(model_name="plain", usage_extract=None, finish_reason_extract="")
    async with gateway.client() as client:
        assert (await client.post("/api/server/register", json=plain)).status_code == 200
        reply = await client.post(
            "/v1/chat/completions", json={"model": "plain", "messages": _messages()}
        )
        assert reply.status_code == 200, reply.text
        assert "usage" not in reply.json()  # the client is not told made-up numbers
        await settle(gateway)
        (row,) = (await usage_report(client, model="plain", group_by="model,estimated"))["data"]
        metrics = (await client.get("/metrics")).text
    # 4 bytes a token, and 4 tokens for the message: "tell me a story" is 15 bytes
    assert row["estimated"] is True and row["estimated_requests"] == 1
    assert row["prompt_tokens"] == 4 + 4
    answer = "".join(answer_words("template", PROMPT))
    assert row["completion_tokens"] == -(-len(answer) // 4)
    assert _metric(metrics, "gateway_tokens_total", model="plain", kind="prompt", estimated="true")
    assert (
        _metric(metrics, "gateway_tokens_total", model="plain", kind="completion", estimated="true")
        == row["completion_tokens"]
    )


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_a_passthrough_stream_without_usage_is_estimated_per_event(
    gateway: Gateway, kind: str
) -> None:
    quiet = ModelServer(protocol=kind, name="quiet", reports_usage=False)
    await quiet.start()
    try:
        async with gateway.client() as client:
            body = {"model_name": "quiet", "req_url_template": quiet.base_url, "preset": kind}
            assert (await client.post("/api/server/register", json=body)).status_code == 200
            path = "/v1/chat/completions" if kind == "openai" else "/api/chat"
            reply = await client.post(
                path, json={"model": "quiet", "messages": _messages(), "stream": True}
            )
            assert reply.status_code == 200, reply.text
            await settle(gateway)
            (row,) = (await usage_report(client, model="quiet"))["data"]
    finally:
        await quiet.stop()
    assert row["estimated_requests"] == 1
    assert row["completion_tokens"] == len(answer_words("quiet", PROMPT))  # one per word event
    assert row["prompt_tokens"] == 4 + 4


async def test_tokens_and_speed_are_in_the_metrics_per_worker(
    gateway: Gateway, fleet: dict[str, ModelServer]
) -> None:
    async with gateway.client() as client:
        for stream in (False, True):
            reply = await client.post(
                "/v1/chat/completions",
                json={"model": "ollama", "messages": _messages(), "stream": stream},
            )
            assert reply.status_code == 200
        text = (await client.get("/metrics")).text
    words = len(answer_words("ollama", PROMPT))
    labels = {"model": "ollama", "estimated": "false"}
    assert _metric(text, "gateway_tokens_total", kind="prompt", **labels) == 2 * PROMPT_TOKENS
    assert _metric(text, "gateway_tokens_total", kind="completion", **labels) == 2 * words
    assert _metric(text, "gateway_upstream_tokens_per_second_count", model="ollama") == 1  # streams
    assert _metric(text, "gateway_upstream_ttft_seconds_count", model="ollama") == 1


async def test_two_gateways_two_keys_three_models_add_up_to_what_the_workers_reported(
    make_gateway: GatewayFactory,
) -> None:
    closed = {"admin_token": ADMIN, "require_api_keys": True}
    first, second = await make_gateway(**closed), await make_gateway(**closed)
    protocols = ("openai", "ollama", "openai")
    servers = [ModelServer(protocol=p, name=f"m{i}") for i, p in enumerate(protocols)]
    for server in servers:
        await server.start()
    try:
        async with first.client() as one, second.client() as two:
            for i, server in enumerate(servers):
                reg = {
                    "model_name": f"m{i}",
                    "req_url_template": server.base_url,
                    "preset": server.protocol,
                }
                reply = await one.post("/api/server/register", json=reg, headers=ADMIN_HEADERS)
                assert reply.status_code == 200, reply.text
            keys = [await create_key(one, name) for name in ("team-a", "team-b")]
            router = second.app[ROUTER]
            await until(lambda: all(router.pool(f"m{i}") for i in range(3)))
            expected: dict[tuple[str, str], list[int]] = {}
            for n in range(36):
                client = (one, two)[n % 2]
                model, team = f"m{n % 3}", n % 4 // 2
                path = ("/v1/chat/completions", "/api/chat", "/v1/completions")[n % 3]
                body: dict[str, Any] = {"model": model, "stream": n % 5 < 2}
                if path == "/v1/completions":
                    body["prompt"] = PROMPT
                else:
                    body["messages"] = _messages()
                reply = await client.post(path, json=body, headers=bearer(keys[team]))
                assert reply.status_code == 200, reply.text
                counts = expected.setdefault((("team-a", "team-b")[team], model), [0, 0])
                counts[0] += PROMPT_TOKENS
                counts[1] += len(answer_words(model, PROMPT))
            await settle(first, second)
            reply = await two.get("/api/server/usage", headers=ADMIN_HEADERS)
            assert reply.status_code == 200, reply.text
    finally:
        for server in servers:
            await server.stop()
    got = {
        (row["key_name"], row["model"]): [row["prompt_tokens"], row["completion_tokens"]]
        for row in reply.json()["data"]
    }
    assert got == expected
    assert len(got) == 6  # two keys x three models
