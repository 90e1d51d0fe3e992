"""The Assistants API (v2, beta) with the official `openai` client: assistants, threads and
messages kept in Redis, runs polled and streamed against an OpenAI-compatible worker, Ollama
and a seed-style template worker, ownership by API key, replicas, refusals and limits."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from openai import AsyncAssistantEventHandler
from openai.types.beta.threads import Message, Text, TextDelta

from tests.conftest import Gateway, GatewayFactory, ProtocolWorkerFactory, WorkerFactory
from tests.gateway.test_auth import ADMIN_HEADERS, closed_gateway, create_key
from tests.gateway.test_fidelity import registration
from tests.gateway.test_seed_api import seed_registration
from tests.model_server import TOOL_ARGUMENTS, ModelServer, answer_words
from tests.workers import ProtocolWorker

# The SDK marks every Assistants method deprecated (in favour of Responses); it still works.
pytestmark = pytest.mark.filterwarnings(
    "ignore:(deprecated|The Assistants API is deprecated):DeprecationWarning"
)

KINDS = ("openai", "ollama", "template")
PROMPT = "tell me a story"
INSTRUCTIONS = "be brief"


def sdk(gateway: Gateway, key: str = "x") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


@pytest.fixture
async def fleet(gateway: Gateway) -> AsyncIterator[dict[str, ModelServer]]:
    servers = {}
    async with gateway.client() as client:
        for kind in KINDS:
            server = ModelServer(protocol=kind, name=kind)
            await server.start()
            servers[kind] = server
            reply = await client.post("/api/server/register", json=registration(kind, server))
            assert reply.status_code == 200, reply.text
    yield servers
    for server in servers.values():
        await server.stop()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    found = sdk(gateway)
    yield found
    await found.close()


def text_of(message: Message) -> str:
    return "".join(part.text.value for part in message.content if part.type == "text")


async def test_assistants_are_created_listed_changed_and_deleted(
    client: openai.AsyncOpenAI,
) -> None:
    assistants = client.beta.assistants
    first = await assistants.create(
        model="m", name="first", instructions=INSTRUCTIONS, metadata={"team": "a"}
    )
    second = await assistants.create(model="m", name="second", temperature=0.2)
    assert first.object == "assistant" and first.id.startswith("asst_")
    assert (await assistants.retrieve(first.id)).instructions == INSTRUCTIONS

    newest_first = await assistants.list()
    assert [a.id for a in newest_first.data] == [second.id, first.id]
    one = await assistants.list(limit=1, order="asc")
    assert [a.id for a in one.data] == [first.id] and one.has_more
    rest = await assistants.list(limit=1, order="asc", after=first.id)
    assert [a.id for a in rest.data] == [second.id] and not rest.has_more
    every = [a.id async for a in assistants.list(limit=1, order="asc")]  # the SDK pages on
    assert every == [first.id, second.id]

    changed = await assistants.update(first.id, name="renamed", metadata={"team": "b"})
    assert (changed.name, changed.instructions, changed.metadata) == (
        "renamed",
        INSTRUCTIONS,
        {"team": "b"},
    )
    assert (await assistants.retrieve(first.id)).name == "renamed"

    deleted = await assistants.delete(first.id)
    assert deleted.deleted and deleted.id == first.id
    with pytest.raises(openai.NotFoundError):
        await assistants.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await assistants.delete(first.id)
    assert [a.id for a in (await assistants.list()).data] == [second.id]


async def test_threads_keep_their_messages_in_order(client: openai.AsyncOpenAI) -> None:
    threads = client.beta.threads
    thread = await threads.create(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        ],
        metadata={"topic": "counting"},
    )
    assert thread.id.startswith("thread_")
    assert (await threads.retrieve(thread.id)).metadata == {"topic": "counting"}
    third = await threads.messages.create(thread.id, role="user", content="three")
    assert third.thread_id == thread.id and text_of(third) == "three"
    assert text_of(await threads.messages.retrieve(third.id, thread_id=thread.id)) == "three"

    listed = await threads.messages.list(thread.id)  # newest first
    assert [text_of(m) for m in listed.data] == ["three", "two", "one"]
    assert [m.role for m in listed.data] == ["user", "assistant", "user"]
    first = await threads.messages.list(thread.id, order="asc", limit=2)
    assert [text_of(m) for m in first.data] == ["one", "two"] and first.has_more
    after = await threads.messages.list(thread.id, order="asc", after=first.data[-1].id)
    assert [text_of(m) for m in after.data] == ["three"] and not after.has_more

    updated = await threads.update(thread.id, metadata={"topic": "done"})
    assert updated.metadata == {"topic": "done"}
    assert (await threads.delete(thread.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await threads.retrieve(thread.id)
    with pytest.raises(openai.NotFoundError):
        await threads.messages.list(thread.id)


def expected(kind: str, prompt: str = PROMPT) -> str:
    return "".join(answer_words(kind, prompt))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_polled_run_appends_the_models_answer(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer], kind: str
) -> None:
    assistant = await client.beta.assistants.create(model=kind, instructions=INSTRUCTIONS)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id
    )
    assert run.status == "completed", run.last_error
    assert run.last_error is None and run.completed_at is not None

    messages = (await client.beta.threads.messages.list(thread.id)).data
    answer = messages[0]
    assert (answer.role, answer.run_id, answer.assistant_id) == ("assistant", run.id, assistant.id)
    assert text_of(answer) == expected(kind)
    assert [
        m.id for m in (await client.beta.threads.messages.list(thread.id, run_id=run.id)).data
    ] == [answer.id]

    words = len(answer_words(kind, PROMPT))
    assert run.usage is not None and run.usage.completion_tokens == words
    sent = fleet[kind].last
    if kind == "template":  # a template worker gets the last user turn, and counts only it
        assert sent["ask"] == PROMPT
        assert run.usage.prompt_tokens == 4
    else:
        assert sent["messages"][0] == {"role": "system", "content": INSTRUCTIONS}
        assert sent["messages"][-1] == {"role": "user", "content": PROMPT}
        assert run.usage.prompt_tokens == 6
    listed = await client.beta.threads.runs.list(thread.id)
    assert [r.id for r in listed.data] == [run.id]


class Collect(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.deltas: list[str] = []
        self.done: list[str] = []
        self.events: list[str] = []

    async def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas.append(delta.value or "")

    async def on_text_done(self, text: Text) -> None:
        self.done.append(text.value)


async def stream_run(client: openai.AsyncOpenAI, thread_id: str, assistant_id: str) -> Collect:
    """Run the thread streamed, through the SDK's event handler; return what it saw."""
    handler = Collect()
    async with client.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant_id, event_handler=handler
    ) as stream:
        await stream.until_done()
    return handler


@pytest.mark.parametrize("kind", KINDS)
async def test_a_streamed_run_reaches_the_event_handler(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer], kind: str
) -> None:
    assistant = await client.beta.assistants.create(model=kind, instructions=INSTRUCTIONS)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    handler = await stream_run(client, thread.id, assistant.id)
    assert "".join(handler.deltas) == expected(kind)
    assert handler.done == [expected(kind)]
    assert handler.events[:3] == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
    ]
    assert handler.events[-2:] == ["thread.message.completed", "thread.run.completed"]
    run = handler.current_run
    assert run is not None and run.status == "completed"
    assert run.usage is not None and run.usage.completion_tokens == len(answer_words(kind, PROMPT))

    stored = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert stored.status == "completed"
    newest = (await client.beta.threads.messages.list(thread.id)).data[0]
    assert text_of(newest) == expected(kind) and newest.run_id == run.id


async def test_a_run_sees_the_whole_thread_and_run_overrides(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer]
) -> None:
    assistant = await client.beta.assistants.create(model="openai", instructions=INSTRUCTIONS)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    first = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id
    )
    assert first.status == "completed"
    second = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        additional_instructions="and kind",
        additional_messages=[{"role": "user", "content": PROMPT}],
        temperature=0.3,
        max_completion_tokens=2,
    )
    sent = fleet["openai"].last
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][0]["content"] == f"{INSTRUCTIONS}\n\nand kind"
    assert sent["messages"][2]["content"] == expected("openai", "hello")
    assert (sent["temperature"], sent["max_tokens"]) == (0.3, 2)
    # Cut at max_completion_tokens: the run and its message say incomplete, as OpenAI's do.
    assert second.status == "incomplete"
    assert second.incomplete_details is not None
    assert second.incomplete_details.reason == "max_completion_tokens"
    answer = (await client.beta.threads.messages.list(thread.id)).data[0]
    assert answer.status == "incomplete" and text_of(answer) == "openai says"


async def test_assistants_of_one_key_are_not_found_by_another(
    make_gateway: GatewayFactory, fleet_free_worker: ModelServer
) -> None:
    gateway = await closed_gateway(make_gateway)
    async with gateway.client() as http:
        reply = await http.post(
            "/api/server/register",
            json=registration("openai", fleet_free_worker),
            headers=ADMIN_HEADERS,
        )
        assert reply.status_code == 200, reply.text
        key_a, key_b = await create_key(http, "a"), await create_key(http, "b")
    a, b = sdk(gateway, key_a), sdk(gateway, key_b)
    try:
        assistant = await a.beta.assistants.create(model="openai")
        thread = await a.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
        run = await a.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
        )
        assert run.status == "completed"
        # Made one at a time: a coroutine left unawaited by a failure would warn in another test.
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: b.beta.assistants.retrieve(assistant.id),
            lambda: b.beta.threads.retrieve(thread.id),
            lambda: b.beta.threads.messages.list(thread.id),
            lambda: b.beta.threads.messages.create(thread.id, role="user", content="mine now"),
            lambda: b.beta.threads.runs.retrieve(run.id, thread_id=thread.id),
            lambda: b.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id),
            lambda: b.beta.assistants.delete(assistant.id),
            lambda: b.beta.threads.delete(thread.id),
        ]
        for attempt in attempts:
            with pytest.raises(openai.NotFoundError):
                await attempt()
        assert (await b.beta.assistants.list()).data == []
        # B's own assistant cannot run A's thread either, nor A's assistant B's thread.
        own = await b.beta.assistants.create(model="openai")
        with pytest.raises(openai.NotFoundError):
            await b.beta.threads.runs.create(thread_id=thread.id, assistant_id=own.id)
        assert (await a.beta.assistants.retrieve(assistant.id)).id == assistant.id
    finally:
        await a.close()
        await b.close()


@pytest.fixture
async def fleet_free_worker() -> AsyncIterator[ModelServer]:
    server = ModelServer(protocol="openai", name="openai")
    await server.start()
    yield server
    await server.stop()


async def test_a_run_started_on_one_replica_is_followed_on_another(
    make_gateway: GatewayFactory, fleet_free_worker: ModelServer
) -> None:
    one, two = await make_gateway(), await make_gateway()
    async with one.client() as http:
        reply = await http.post(
            "/api/server/register", json=registration("openai", fleet_free_worker)
        )
        assert reply.status_code == 200, reply.text
    first, second = sdk(one), sdk(two)
    try:
        assistant = await first.beta.assistants.create(model="openai")
        thread = await first.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
        run = await first.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "queued"
        polled = await second.beta.threads.runs.poll(run.id, thread_id=thread.id)
        assert polled.status == "completed"
        answer = (await second.beta.threads.messages.list(thread.id)).data[0]
        assert text_of(answer) == expected("openai")
        # The first process goes away; the conversation goes on through the second.
        await one.runner.cleanup()
        await second.beta.threads.messages.create(thread.id, role="user", content="again")
        again = await second.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id
        )
        assert again.status == "completed"
        roles = [m["role"] for m in fleet_free_worker.last["messages"]]
        assert roles == ["user", "assistant", "user"]
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(
    "tool",
    [{"type": "code_interpreter"}, {"type": "file_search"}],
)
async def test_hosted_tools_are_refused(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer], tool: dict[str, Any]
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.beta.assistants.create(model="openai", tools=[tool])  # type: ignore[list-item]
    assert tool["type"] in refused.value.message and "hosted" in refused.value.message
    assistant = await client.beta.assistants.create(model="openai")
    thread = await client.beta.threads.create()
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.runs.create(
            thread_id=thread.id,
            assistant_id=assistant.id,
            tools=[tool],  # type: ignore[list-item]
        )
    with pytest.raises(openai.BadRequestError) as files:
        await client.beta.threads.create(
            messages=[{"role": "user", "content": "x", "attachments": [{"file_id": "file-1"}]}]
        )
    assert "files" in files.value.message


async def test_size_limits_are_clear_errors(
    make_gateway: GatewayFactory, fleet_free_worker: ModelServer
) -> None:
    gateway = await make_gateway(assistants_max_messages=3, assistants_max_message_bytes=2048)
    async with gateway.client() as http:
        reply = await http.post(
            "/api/server/register", json=registration("openai", fleet_free_worker)
        )
        assert reply.status_code == 200, reply.text
    client = sdk(gateway)
    try:
        thread = await client.beta.threads.create()
        with pytest.raises(openai.APIStatusError) as too_large:
            await client.beta.threads.messages.create(thread.id, role="user", content="x" * 4096)
        assert too_large.value.status_code == 413
        assert "assistants_max_message_bytes" in too_large.value.message
        for text in ("one", "two"):
            await client.beta.threads.messages.create(thread.id, role="user", content=text)
        assistant = await client.beta.assistants.create(model="openai")
        run = await client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id
        )
        assert run.status == "completed"  # the answer was the third message
        with pytest.raises(openai.ConflictError) as full:
            await client.beta.threads.messages.create(thread.id, role="user", content="four")
        assert "assistants_max_messages" in full.value.message
        with pytest.raises(openai.ConflictError):
            await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        with pytest.raises(openai.BadRequestError):
            await client.beta.threads.create(messages=[{"role": "user", "content": "x"}] * 4)
    finally:
        await client.close()


async def test_a_thread_with_a_run_in_progress_takes_no_more(
    gateway: Gateway, client: openai.AsyncOpenAI, make_worker: WorkerFactory
) -> None:
    slow = await make_worker(delay_s=60)
    async with gateway.client() as http:
        reply = await http.post("/api/server/register", json=seed_registration("slow", slow))
        assert reply.status_code == 200, reply.text
    assistant = await client.beta.assistants.create(model="slow")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    with pytest.raises(openai.ConflictError) as busy:
        await client.beta.threads.messages.create(thread.id, role="user", content="more")
    assert run.id in busy.value.message or "in progress" in busy.value.message
    with pytest.raises(openai.ConflictError):
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    status = (await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)).status
    assert status in ("queued", "in_progress")


async def test_a_failed_worker_fails_the_run_with_last_error(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer]
) -> None:
    fleet["openai"].status = 500
    assistant = await client.beta.assistants.create(model="openai")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id
    )
    assert run.status == "failed" and run.failed_at is not None
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "openai" in run.last_error.message
    assert [m.role for m in (await client.beta.threads.messages.list(thread.id)).data] == ["user"]
    # Streamed, the failure is known before the first event: an HTTP status, the run failed.
    with pytest.raises(openai.APIStatusError) as refused:
        async with client.beta.threads.runs.stream(
            thread_id=thread.id, assistant_id=assistant.id
        ) as stream:
            await stream.until_done()
    assert refused.value.status_code == 502
    runs = (await client.beta.threads.runs.list(thread.id)).data
    assert [r.status for r in runs] == ["failed", "failed"]
    # The thread is free again once its runs have ended.
    fleet["openai"].status = 200
    again = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id
    )
    assert again.status == "completed"


async def test_unknown_things_are_404_and_bad_queries_400(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    assistant = await client.beta.assistants.create(model="ghost")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert "ghost" in unknown.value.message
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_nope")
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.retrieve("thread_../../x")
    async with gateway.client() as http:
        for query in ("limit=0", "limit=101", "order=sideways", "after=msg_unknown", "before=x"):
            reply = await http.get(f"/v1/threads/{thread.id}/messages?{query}")
            assert reply.status_code == 400, (query, reply.text)
            assert reply.json()["error"]["message"]
        reply = await http.post("/v1/assistants", json={"model": "m", "colour": "blue"})
        assert reply.status_code == 400 and "colour" in reply.json()["error"]["message"]
        reply = await http.post(f"/v1/threads/{thread.id}/messages", content=b"{")
        assert reply.status_code == 400


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize("kind", ("openai", "ollama"))
async def test_function_calls_go_to_the_client_and_their_outputs_back(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer], kind: str
) -> None:
    runs = client.beta.threads.runs
    assistant = await client.beta.assistants.create(model=kind, tools=[WEATHER])
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    run = await runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action" and run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    assert orjson.loads(calls[0].function.arguments) == TOOL_ARGUMENTS
    assert fleet[kind].last["tools"][0]["function"]["name"] == "get_weather"
    # The thread waits for the outputs; outputs for other calls are refused.
    with pytest.raises(openai.ConflictError):
        await client.beta.threads.messages.create(thread.id, role="user", content="hurry")
    with pytest.raises(openai.BadRequestError) as wrong:
        await runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "?"}]
        )
    assert calls[0].id in wrong.value.message

    done = await runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "sunny"}],
    )
    assert done.status == "completed", done.last_error
    answer = (await client.beta.threads.messages.list(thread.id)).data[0]
    assert text_of(answer) == expected(kind, "tool said sunny") and answer.run_id == run.id
    sent = fleet[kind].last["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[-1]["content"] == "sunny"
    # Usage counts both of the run's turns: the call (one token, as the fake counts it) and the
    # answer.
    assert done.usage is not None
    assert done.usage.completion_tokens == 1 + len(answer_words(kind, "tool said sunny"))
    with pytest.raises(openai.BadRequestError):
        await runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": calls[0].id, "output": "x"}]
        )


async def test_function_calls_in_a_streamed_run(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer]
) -> None:
    runs = client.beta.threads.runs
    assistant = await client.beta.assistants.create(model="openai", tools=[WEATHER])
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    first = await stream_run(client, thread.id, assistant.id)
    assert first.events[-1] == "thread.run.requires_action" and first.deltas == []
    run = first.current_run
    assert run is not None and run.required_action is not None
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    assert orjson.loads(call.function.arguments) == TOOL_ARGUMENTS

    second = Collect()
    async with runs.submit_tool_outputs_stream(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "rain"}],
        event_handler=second,
    ) as stream:
        await stream.until_done()
    assert "".join(second.deltas) == expected("openai", "tool said rain")
    assert second.events[-1] == "thread.run.completed"
    assert [m.role for m in (await client.beta.threads.messages.list(thread.id)).data] == [
        "assistant",
        "user",
    ]


async def test_function_tools_on_a_template_worker_fail_clearly(
    client: openai.AsyncOpenAI, fleet: dict[str, ModelServer]
) -> None:
    assistant = await client.beta.assistants.create(model="template", tools=[WEATHER])
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id
    )
    assert run.status == "failed" and run.last_error is not None
    assert run.last_error.code == "invalid_prompt" and "template" in run.last_error.message
    with pytest.raises(openai.BadRequestError) as refused:
        async with client.beta.threads.runs.stream(
            thread_id=thread.id, assistant_id=assistant.id
        ) as stream:
            await stream.until_done()
    assert "tools" in refused.value.message
    assert fleet["template"].received == []


async def register_protocol_worker(gateway: Gateway, model: str, worker: ProtocolWorker) -> None:
    async with gateway.client() as http:
        body = {"model_name": model, "req_url_template": worker.base_url, "preset": "openai"}
        reply = await http.post("/api/server/register", json=body)
        assert reply.status_code == 200, reply.text


async def test_a_worker_dying_mid_stream_fails_the_run_and_keeps_its_text(
    gateway: Gateway, client: openai.AsyncOpenAI, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    dying = await make_protocol_worker("openai", name="w", die_after=3)
    await register_protocol_worker(gateway, "dying", dying)
    assistant = await client.beta.assistants.create(model="dying")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    handler = await stream_run(client, thread.id, assistant.id)
    said = "".join(handler.deltas)
    assert said and "w says tell me a story".startswith(said) and said != "w says tell me a story"
    assert handler.events[-2:] == ["thread.message.incomplete", "thread.run.failed"]
    run = handler.current_run
    assert run is not None and run.last_error is not None
    assert run.last_error.code == "server_error" and "broke off" in run.last_error.message
    assert (await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)).status == "failed"
    kept = (await client.beta.threads.messages.list(thread.id)).data[0]
    assert (kept.status, text_of(kept)) == ("incomplete", said)
    assert kept.incomplete_details is not None and kept.incomplete_details.reason == "run_failed"


async def test_a_client_leaving_a_stream_cancels_its_run(
    gateway: Gateway, client: openai.AsyncOpenAI, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    slow = await make_protocol_worker("openai", name="w", chunk_delay_s=0.5)
    await register_protocol_worker(gateway, "slow", slow)
    assistant = await client.beta.assistants.create(model="slow")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": PROMPT}])
    async with gateway.client() as http:
        body = {"assistant_id": assistant.id, "stream": True}
        async with http.stream("POST", f"/v1/threads/{thread.id}/runs", json=body) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line == "event: thread.message.delta":
                    break  # leave with the answer under way
    await asyncio.wait_for(slow.client_gone.wait(), 30)  # the worker's request is closed too
    runs = client.beta.threads.runs
    run = (await runs.list(thread.id)).data[0]
    while run.status == "in_progress":  # the gateway stores the cancel as it notices
        await asyncio.sleep(0.05)
        run = await runs.retrieve(run.id, thread_id=thread.id)
    assert run.status == "cancelled" and run.cancelled_at is not None
    kept = (await client.beta.threads.messages.list(thread.id)).data[0]
    assert kept.role == "assistant" and kept.status == "incomplete" and text_of(kept)
    assert kept.incomplete_details is not None
    assert kept.incomplete_details.reason == "run_cancelled"
