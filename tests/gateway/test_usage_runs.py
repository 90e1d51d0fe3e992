"""Assistants runs go the way of chat requests: accounted, held to their key's limits, sent
through aliases and fallbacks, whether polled (a task after the request) or streamed.

The fake model server counts words: a run's prompt is its instructions ("be brief", 2) and
the user's message ("tell me a story", 4); its answer is "<model> says tell me a story" (6).
"""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from gateway.observe import MODEL_HEADER
from tests.conftest import Gateway, GatewayFactory
from tests.gateway.test_assistants import INSTRUCTIONS, PROMPT, expected, stream_run, text_of
from tests.gateway.test_auth import ADMIN_HEADERS, bearer, closed_gateway, create_key
from tests.gateway.test_usage import settle
from tests.model_server import ModelServer, answer_words

pytestmark = pytest.mark.filterwarnings(
    "ignore:(deprecated|The Assistants API is deprecated):DeprecationWarning"
)

PROMPT_TOKENS = 2 + 4
COMPLETION_TOKENS = len(answer_words("m", PROMPT))
TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS  # one run of one turn


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, ModelServer]]:
    found = {name: ModelServer(protocol="openai", name=name) for name in ("m", "big", "small")}
    for server in found.values():
        await server.start()
    yield found
    for server in found.values():
        await server.stop()


async def register(http: httpx.AsyncClient, model: str, server: ModelServer) -> None:
    body = {"model_name": model, "req_url_template": server.base_url, "preset": "openai"}
    reply = await http.post("/api/server/register", json=body, headers=ADMIN_HEADERS)
    assert reply.status_code == 200, reply.text


async def put_model(http: httpx.AsyncClient, name: str, **settings: Any) -> None:
    reply = await http.put(f"/api/server/models/{name}", json=settings, headers=ADMIN_HEADERS)
    assert reply.status_code == 200, reply.text


def sdk(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


async def run_thread(client: openai.AsyncOpenAI, model: str, *, stream: bool) -> tuple[str, Any]:
    """Run a new thread on `model`, polled or streamed; return the thread's id and the run."""
    assistant = await client.beta.assistants.create(model=model, instructions=INSTRUCTIONS)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    if stream:
        return thread.id, (await stream_run(client, thread.id, assistant.id)).current_run
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    return thread.id, run


async def answer_of(client: openai.AsyncOpenAI, thread_id: str) -> str:
    return text_of((await client.beta.threads.messages.list(thread_id)).data[0])


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_runs_tokens_are_in_the_usage_api_for_its_key_and_model(
    make_gateway: GatewayFactory, servers: dict[str, ModelServer]
) -> None:
    gateway = await closed_gateway(make_gateway)
    async with gateway.client() as http:
        await register(http, "m", servers["m"])
        # One key charged at the end of each run (it has a limit), one by the usage flush.
        limited = await create_key(http, "limited", tokens_per_day=10_000)
        free = await create_key(http, "free")
    runs: dict[str, list[Any]] = {}
    for name, key in (("limited", limited), ("free", free)):
        client = sdk(gateway, key)
        try:
            runs[name] = [(await run_thread(client, "m", stream=s))[1] for s in (False, True)]
        finally:
            await client.close()
    await settle(gateway)
    async with gateway.client() as http:
        reply = await http.get("/api/server/usage", headers=ADMIN_HEADERS)
        assert reply.status_code == 200, reply.text
        me = await http.get("/api/server/usage/me", headers=bearer(limited))
        keys = await http.get("/api/server/keys", headers=ADMIN_HEADERS)
        metrics = (await http.get("/metrics")).text
    for both in runs.values():  # what each run says it used is what the worker reported
        for run in both:
            assert run is not None and run.status == "completed", run
            usage = run.usage
            assert usage is not None
            assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
                PROMPT_TOKENS,
                COMPLETION_TOKENS,
                TOKENS,
            )
    rows = {(row["key_name"], row["model"]): row for row in reply.json()["data"]}
    assert set(rows) == {("limited", "m"), ("free", "m")}
    for row in rows.values():
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
            2,
            2 * PROMPT_TOKENS,
            2 * COMPLETION_TOKENS,
        )
        assert row["estimated_requests"] == 0
    assert me.json()["total"]["total_tokens"] == 2 * TOKENS
    spend = {entry["name"]: entry["spend"] for entry in keys.json()["data"]}
    assert spend["limited"]["tokens_today"] == 2 * TOKENS
    assert spend["free"]["tokens_today"] == 2 * TOKENS
    prompt = metric(metrics, "gateway_tokens_total", model="m", kind="prompt")
    assert prompt == 4 * PROMPT_TOKENS
    assert metric(metrics, "gateway_tokens_total", model="m", kind="completion") == (
        4 * COMPLETION_TOKENS
    )


@pytest.mark.parametrize(
    ("limit", "code"),
    [({"tokens_per_day": TOKENS}, "rate_limited"), ({"budget": TOKENS}, "budget_exceeded")],
    ids=["tokens_per_day", "budget"],
)
async def test_a_key_over_its_limit_cannot_start_a_run(
    make_gateway: GatewayFactory,
    servers: dict[str, ModelServer],
    limit: dict[str, Any],
    code: str,
) -> None:
    # A unit of money per token, so the budget runs out with the tokens.
    prices = {"m": {"prompt": 1_000_000, "completion": 1_000_000}}
    gateway = await closed_gateway(make_gateway, prices=prices)
    async with gateway.client() as http:
        await register(http, "m", servers["m"])
        key = await create_key(http, "team-a", **limit)
    client = sdk(gateway, key)
    runs = client.beta.threads.runs
    try:
        assistant = await client.beta.assistants.create(model="m", instructions=INSTRUCTIONS)
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
        first = await runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
        )
        assert first.status == "completed", first.last_error  # it came with nothing spent
        # The run, done after its request had been answered, was charged: the key is spent.
        with pytest.raises(openai.RateLimitError) as polled_refused:
            await runs.create(thread_id=thread.id, assistant_id=assistant.id)
        with pytest.raises(openai.RateLimitError) as stream_refused:
            async with runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
                await stream.until_done()
        listed = (await runs.list(thread.id)).data
    finally:
        await client.close()
    for refused in (polled_refused.value, stream_refused.value):
        assert refused.status_code == 429 and refused.code == code
        assert int(refused.response.headers["Retry-After"]) >= 1
    assert [run.id for run in listed] == [first.id]  # no run was stored for the refusals
    assert len(servers["m"].received) == 1


async def test_a_run_on_an_alias_is_answered_by_the_model_it_chooses(
    gateway: Gateway, servers: dict[str, ModelServer]
) -> None:
    async with gateway.client() as http:
        await register(http, "m", servers["m"])
        await put_model(http, "chat", alias=[{"model": "m", "weight": 1}])
    client = sdk(gateway, "x")
    try:
        for stream in (False, True):
            thread_id, run = await run_thread(client, "chat", stream=stream)
            assert run is not None and run.status == "completed", run
            assert await answer_of(client, thread_id) == expected("m")
            assert run.model == "chat"  # the run keeps the name it was asked for
    finally:
        await client.close()
    assert len(servers["m"].received) == 2
    await settle(gateway)
    async with gateway.client() as http:
        report = (await http.get("/api/server/usage", params={"group_by": "model"})).json()
    assert [(row["model"], row["requests"]) for row in report["data"]] == [("m", 2)]


async def test_a_run_on_a_model_whose_worker_is_down_is_answered_by_its_fallback(
    gateway: Gateway, servers: dict[str, ModelServer]
) -> None:
    async with gateway.client() as http:
        await register(http, "big", servers["big"])
        await register(http, "small", servers["small"])
        await put_model(http, "big", fallbacks=["small"])
    await servers["big"].stop()  # its worker refuses connections now
    client = sdk(gateway, "x")
    try:
        thread_id, run = await run_thread(client, "big", stream=False)
        assert run.status == "completed", run.last_error
        assert await answer_of(client, thread_id) == expected("small")
        await client.beta.threads.messages.create(thread_id, role="user", content="again")
        async with gateway.client() as http:  # streamed: the answer says who gave it
            assistant = await client.beta.assistants.create(model="big")
            body = {"assistant_id": assistant.id, "stream": True}
            reply = await http.post(f"/v1/threads/{thread_id}/runs", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.headers[MODEL_HEADER] == "small"
        assert "event: thread.run.completed" in reply.text
        assert await answer_of(client, thread_id) == expected("small", "again")
    finally:
        await client.close()
    await settle(gateway)
    async with gateway.client() as http:
        report = (await http.get("/api/server/usage", params={"group_by": "model"})).json()
    assert [(row["model"], row["requests"]) for row in report["data"]] == [("small", 2)]
