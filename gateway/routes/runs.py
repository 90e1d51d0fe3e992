"""OpenAI's Assistants API (v2, beta): runs of a thread by an assistant.

`POST .../runs` answers at once with the run queued and runs it in this process; `stream:
true` runs it inside the request and answers with its events (gateway/runs.py). Either way
its state is in Redis, so `GET .../runs/{run_id}` from any replica follows it.
"""

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.affinity import SESSION_HEADER
from gateway.auth import API_KEY
from gateway.endpoints import Routes
from gateway.errors import InvalidRequest
from gateway.observe import TRACE, Trace
from gateway.routes._common import check_model, json_response, parse
from gateway.routes.assistants import (
    Metadata,
    NewMessage,
    StrictBody,
    Temperature,
    Tools,
    TopP,
    check_tools,
    message_record,
    owner,
    page,
    paging,
    store,
)
from gateway.run_shapes import now
from gateway.runs import POLL_AFTER_MS, Origin
from gateway.state import RUNS
from registry import ACTIVE, RunRecord, new_id

routes = Routes("openai")

Tokens = Annotated[int, Field(ge=1)]


class Truncation(BaseModel):
    type: Literal["auto", "last_messages"]
    last_messages: Annotated[int, Field(ge=1)] | None = None


class NewRun(StrictBody):
    assistant_id: Annotated[str, Field(min_length=1)]
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    instructions: str | None = None
    additional_instructions: str | None = None
    additional_messages: Annotated[list[NewMessage], Field(max_length=100)] | None = None
    tools: Tools | None = None
    metadata: Metadata | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_completion_tokens: Tokens | None = None
    max_prompt_tokens: Tokens | None = None  # kept on the run; not enforced
    response_format: Any = None
    tool_choice: Any = None
    truncation_strategy: Truncation | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: str | None = None  # accepted; workers get no such setting
    stream: bool = False


@routes.post(
    "/v1/threads/{thread_id}/runs", access="inference", body=NewRun, answer=RunRecord, streams=True
)
async def create_run(request: web.Request) -> web.StreamResponse:
    """Run a thread with an assistant: queued and polled, or streamed as events."""
    body = await parse(request, NewRun, "run")
    thread_id = request.match_info["thread_id"]
    states, who, runner = store(request), owner(request), request.app[RUNS]
    assistant = await states.assistant(who, body.assistant_id)
    await states.thread(who, thread_id)
    tools = check_tools(body.tools if body.tools is not None else assistant.tools)
    model = body.model or assistant.model
    check_model(request, model)  # an alias or a fallback answers for it as for a chat
    instructions = body.instructions if body.instructions is not None else assistant.instructions
    if body.additional_instructions:
        instructions = "\n\n".join(filter(None, [instructions, body.additional_instructions]))
    run = runner.new_run(
        id=new_id("run"),
        thread_id=thread_id,
        assistant_id=assistant.id,
        model=model,
        instructions=instructions or "",
        tools=tools,
        metadata=body.metadata or {},
        temperature=body.temperature if body.temperature is not None else assistant.temperature,
        top_p=body.top_p if body.top_p is not None else assistant.top_p,
        max_completion_tokens=body.max_completion_tokens,
        max_prompt_tokens=body.max_prompt_tokens,
        response_format=body.response_format or assistant.response_format,
        tool_choice=body.tool_choice or "auto",
        truncation_strategy=(body.truncation_strategy or Truncation(type="auto")).model_dump(),
        parallel_tool_calls=body.parallel_tool_calls,
    )
    added = [
        message_record(thread_id, m, f"additional_messages[{i}]")
        for i, m in enumerate(body.additional_messages or ())
    ]
    await states.start_run(who, run, added, deadline_s=runner.deadline_s)
    return await _go(request, who, run, stream=body.stream)


async def _go(
    request: web.Request, who: str, run: RunRecord, *, stream: bool
) -> web.StreamResponse:
    """Run the queued `run`: streamed in this request, or as a task (answered at once).

    The key's limits were checked before this request was let in (gateway/auth.py). A
    streamed run is accounted to the request and charged when it ends, as a chat stream is; a
    task outlives its request, so it is accounted to a trace of its own with the request's id
    and key, and charges a metered key itself (gateway/runs.py).
    """
    runner = request.app[RUNS]
    trace = request[TRACE]
    session = request.headers.get(SESSION_HEADER) or run.thread_id
    if stream:
        return await runner.stream(request, who, run, Origin(trace, None, session))
    own = Trace(trace.request_id, key_id=trace.key_id, metered=trace.metered)
    runner.start(who, run, Origin(own, request.get(API_KEY), session))
    return json_response(run.public())


class ToolOutput(StrictBody):
    tool_call_id: Annotated[str, Field(min_length=1)]
    output: str


class ToolOutputs(StrictBody):
    tool_outputs: Annotated[list[ToolOutput], Field(min_length=1, max_length=128)]
    stream: bool = False


@routes.post(
    "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
    access="inference",
    body=ToolOutputs,
    answer=RunRecord,
    streams=True,
)
async def submit_tool_outputs(request: web.Request) -> web.StreamResponse:
    """Give a run waiting on its function calls their outputs; the run goes on."""
    body = await parse(request, ToolOutputs, "tool outputs")
    info = request.match_info
    states, who, runner = store(request), owner(request), request.app[RUNS]
    run = (await states.run(who, info["thread_id"], info["run_id"])).seen_at(now())
    if run.status != "requires_action" or not run.tool_rounds:
        raise InvalidRequest(
            f"run {run.id!r} is {run.status}, not waiting for tool outputs (requires_action)"
        )
    waiting = [call["id"] for call in run.tool_rounds[-1]["calls"]]
    given = [out.tool_call_id for out in body.tool_outputs]
    if sorted(given) != sorted(waiting):
        raise InvalidRequest(
            f"give one output for each of the run's tool calls, {waiting}, all at once "
            f"(given: {given})"
        )
    check_model(request, run.model)
    last = {**run.tool_rounds[-1], "outputs": [out.model_dump() for out in body.tool_outputs]}
    run = run.model_copy(
        update={
            "status": "queued",
            "required_action": None,
            "tool_rounds": [*run.tool_rounds[:-1], last],
            "expires_at": now() + int(runner.deadline_s),
        }
    )
    await states.update_run(who, run, thread=runner.deadline_s, expect="requires_action")
    return await _go(request, who, run, stream=body.stream)


@routes.get("/v1/threads/{thread_id}/runs", access="inference")
async def list_runs(request: web.Request) -> web.Response:
    """List a thread's runs, newest first unless order=asc."""
    query = paging(request)
    found, more = await store(request).runs(
        owner(request),
        request.match_info["thread_id"],
        order=query.order,
        limit=query.limit,
        after=query.after,
    )
    at = now()
    return page([run.seen_at(at) for run in found], more)


@routes.get("/v1/threads/{thread_id}/runs/{run_id}", access="inference", answer=RunRecord)
async def get_run(request: web.Request) -> web.Response:
    """Describe a run: its status, last_error, usage."""
    info = request.match_info
    run = await store(request).run(owner(request), info["thread_id"], info["run_id"])
    run = run.seen_at(now())
    response = json_response(run.public())
    if run.status in ACTIVE:
        response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS)
    return response
