"""OpenAI's Assistants API (v2, beta): assistants, threads and their messages.

State lives in Redis (registry/assistants.py), so any replica answers; each object belongs to
the API key that made it (in an open gateway, to everyone alike) and is a 404 to any other.
Runs are in gateway/routes/runs.py. Hosted tools (file_search, code_interpreter) and files
are not offered: they are refused with a 400 that says so.
"""

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway.endpoints import Routes
from gateway.errors import InvalidRequest, NotFound, invalid
from gateway.observe import TRACE
from gateway.routes._common import json_response, parse
from gateway.run_shapes import now
from gateway.state import ASSISTANTS
from registry import (
    AssistantRecord,
    AssistantStore,
    MessageRecord,
    RunRecord,
    ThreadRecord,
    new_id,
)

routes = Routes("openai")

OPEN_OWNER = "open"  # the owner of everything when API keys are not required

MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Tools = Annotated[list[dict[str, Any]], Field(max_length=128)]

_HOSTED = ("file_search", "code_interpreter")


class StrictBody(BaseModel):
    # Unknown fields are refused: nothing is passed on as it is, so a field the gateway does
    # not read would be silently dropped.
    model_config = ConfigDict(extra="forbid")


class NewAssistant(StrictBody):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: str | None = None
    tools: Tools = []
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: Any = None
    reasoning_effort: str | None = None  # accepted; workers get no such setting


class AssistantChange(NewAssistant):
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None  # type: ignore[assignment]
    tools: Tools | None = None  # type: ignore[assignment]


class NewMessage(StrictBody):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[dict[str, Any]], Field(min_length=1, max_length=100)]
    attachments: list[dict[str, Any]] | None = None
    metadata: Metadata | None = None


class NewThread(StrictBody):
    messages: list[NewMessage] = []
    metadata: Metadata | None = None
    tool_resources: dict[str, Any] | None = None


class ThreadChange(StrictBody):
    metadata: Metadata | None = None
    tool_resources: dict[str, Any] | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


class ListPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


def owner(request: web.Request) -> str:
    """The API key's id the request's objects belong to ("open" without keys)."""
    trace = request.get(TRACE)
    key_id = trace.key_id if trace is not None else None
    return key_id or OPEN_OWNER


def store(request: web.Request) -> AssistantStore:
    return request.app[ASSISTANTS]


def check_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the tools when the gateway can offer each; refuse hosted ones with a 400."""
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind in _HOSTED:
            raise InvalidRequest(
                f"tools[{i}]: {kind} is a hosted tool, which this gateway does not offer "
                "(it has no files or vector stores); give function tools only"
            )
        if kind != "function":
            raise InvalidRequest(f"tools[{i}]: type must be 'function', not {kind!r}")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"tools[{i}]: a function tool needs function.name")
    return tools


def check_resources(resources: dict[str, Any] | None) -> None:
    if resources:
        raise InvalidRequest(
            "tool_resources are for hosted tools (file_search, code_interpreter), which this "
            "gateway does not offer; leave them out"
        )


def message_record(thread_id: str, given: NewMessage, where: str) -> MessageRecord:
    """A message as stored, from a client's message; refuse what needs files."""
    if given.attachments:
        raise InvalidRequest(f"{where}.attachments need files, which this gateway does not keep")
    content: list[dict[str, Any]] = []
    parts = (
        [{"type": "text", "text": given.content}]
        if isinstance(given.content, str)
        else given.content
    )
    for i, part in enumerate(parts):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            content.append({"type": "text", "text": {"value": part["text"], "annotations": []}})
        elif kind == "image_url" and isinstance((part.get("image_url") or {}).get("url"), str):
            image = part["image_url"]
            content.append(
                {
                    "type": "image_url",
                    "image_url": {"url": image["url"], "detail": image.get("detail", "auto")},
                }
            )
        elif kind == "image_file":
            raise InvalidRequest(
                f"{where}.content[{i}]: image_file needs files, which this gateway does not "
                "keep; give the image as image_url (https:// or data:)"
            )
        else:
            raise InvalidRequest(
                f"{where}.content[{i}] must be {{'type': 'text', 'text': str}} or "
                "{'type': 'image_url', 'image_url': {'url': str}}"
            )
    return MessageRecord(
        id=new_id("msg"),
        created_at=now(),
        thread_id=thread_id,
        role=given.role,
        content=content,
        metadata=given.metadata or {},
    )


def page(items: list[BaseModel], has_more: bool) -> web.Response:
    data = [
        item.public() if isinstance(item, RunRecord) else item.model_dump(mode="json")
        for item in items
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


class Paging(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: Annotated[int, Field(ge=1, le=100)] = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None
    run_id: str | None = None


def paging(request: web.Request) -> Paging:
    """The list's query (limit, order, after); refuse `before`, which is not offered."""
    try:
        found = Paging.model_validate(dict(request.query))
    except ValidationError as exc:
        raise invalid(exc, "list query") from None
    if found.before is not None:
        raise InvalidRequest("before is not supported; page forward with after")
    return found


# Assistants


@routes.post("/v1/assistants", access="inference", body=NewAssistant, answer=AssistantRecord)
async def create_assistant(request: web.Request) -> web.Response:
    """Create an assistant: a model with instructions and function tools."""
    body = await parse(request, NewAssistant, "assistant")
    check_resources(body.tool_resources)
    record = AssistantRecord(
        id=new_id("asst"),
        created_at=now(),
        **body.model_dump(exclude={"metadata", "reasoning_effort", "response_format", "tools"}),
        tools=check_tools(body.tools),
        metadata=body.metadata or {},
        response_format=body.response_format or "auto",
    )
    await store(request).create_assistant(owner(request), record)
    return json_response(record.model_dump(mode="json"))


@routes.get("/v1/assistants", access="inference", answer=ListPage)
async def list_assistants(request: web.Request) -> web.Response:
    """List the caller's assistants, newest first unless order=asc."""
    query = paging(request)
    found, more = await store(request).assistants(
        owner(request), order=query.order, limit=query.limit, after=query.after
    )
    return page(list(found), more)


@routes.get("/v1/assistants/{assistant_id}", access="inference", answer=AssistantRecord)
async def get_assistant(request: web.Request) -> web.Response:
    """Describe one of the caller's assistants."""
    found = await store(request).assistant(owner(request), request.match_info["assistant_id"])
    return json_response(found.model_dump(mode="json"))


@routes.post(
    "/v1/assistants/{assistant_id}",
    access="inference",
    body=AssistantChange,
    answer=AssistantRecord,
)
async def update_assistant(request: web.Request) -> web.Response:
    """Change the fields given of one of the caller's assistants."""
    body = await parse(request, AssistantChange, "assistant change")
    check_resources(body.tool_resources)
    states = store(request)
    who = owner(request)
    record = await states.assistant(who, request.match_info["assistant_id"])
    changes = body.model_dump(exclude_unset=True, exclude={"reasoning_effort"})
    if "tools" in changes:
        changes["tools"] = check_tools(body.tools or [])
    if "metadata" in changes:
        changes["metadata"] = body.metadata or {}
    if changes.get("model") is None:
        changes.pop("model", None)
    updated = record.model_copy(update=changes)
    await states.update_assistant(who, updated)
    return json_response(updated.model_dump(mode="json"))


@routes.delete("/v1/assistants/{assistant_id}", access="inference", answer=Deleted)
async def delete_assistant(request: web.Request) -> web.Response:
    """Delete one of the caller's assistants (its threads stay)."""
    assistant_id = request.match_info["assistant_id"]
    if not await store(request).delete_assistant(owner(request), assistant_id):
        raise NotFound(f"no assistant {assistant_id!r}; GET /v1/assistants lists them")
    return json_response({"id": assistant_id, "object": "assistant.deleted", "deleted": True})


# Threads


@routes.post("/v1/threads", access="inference", body=NewThread, answer=ThreadRecord)
async def create_thread(request: web.Request) -> web.Response:
    """Create a thread, with its first messages."""
    body = await parse(request, NewThread, "thread")
    check_resources(body.tool_resources)
    most = store(request).limits.max_messages
    if len(body.messages) > most:
        raise InvalidRequest(
            f"a thread holds at most {most} messages (assistants_max_messages); "
            f"{len(body.messages)} were given"
        )
    thread = ThreadRecord(id=new_id("thread"), created_at=now(), metadata=body.metadata or {})
    messages = [message_record(thread.id, m, f"messages[{i}]") for i, m in enumerate(body.messages)]
    await store(request).create_thread(owner(request), thread, messages)
    return json_response(thread.model_dump(mode="json"))


@routes.get("/v1/threads/{thread_id}", access="inference", answer=ThreadRecord)
async def get_thread(request: web.Request) -> web.Response:
    """Describe one of the caller's threads."""
    found = await store(request).thread(owner(request), request.match_info["thread_id"])
    return json_response(found.model_dump(mode="json"))


@routes.post("/v1/threads/{thread_id}", access="inference", body=ThreadChange, answer=ThreadRecord)
async def update_thread(request: web.Request) -> web.Response:
    """Change a thread's metadata."""
    body = await parse(request, ThreadChange, "thread change")
    check_resources(body.tool_resources)
    states, who = store(request), owner(request)
    thread = await states.thread(who, request.match_info["thread_id"])
    if body.metadata is not None:
        thread = thread.model_copy(update={"metadata": body.metadata})
    await states.update_thread(who, thread)
    return json_response(thread.model_dump(mode="json"))


@routes.delete("/v1/threads/{thread_id}", access="inference", answer=Deleted)
async def delete_thread(request: web.Request) -> web.Response:
    """Delete a thread with its messages and runs."""
    thread_id = request.match_info["thread_id"]
    if not await store(request).delete_thread(owner(request), thread_id):
        raise NotFound(f"no thread {thread_id!r}; threads expire after assistants_ttl_s")
    return json_response({"id": thread_id, "object": "thread.deleted", "deleted": True})


# Messages


@routes.post(
    "/v1/threads/{thread_id}/messages", access="inference", body=NewMessage, answer=MessageRecord
)
async def create_message(request: web.Request) -> web.Response:
    """Add a message to a thread (not while a run of it is in progress)."""
    body = await parse(request, NewMessage, "message")
    thread_id = request.match_info["thread_id"]
    record = message_record(thread_id, body, "message")
    await store(request).add_messages(owner(request), thread_id, [record])
    return json_response(record.model_dump(mode="json"))


@routes.get("/v1/threads/{thread_id}/messages", access="inference", answer=ListPage)
async def list_messages(request: web.Request) -> web.Response:
    """List a thread's messages, newest first unless order=asc; run_id= keeps one run's."""
    query = paging(request)
    found, more = await store(request).messages(
        owner(request),
        request.match_info["thread_id"],
        order=query.order,
        limit=query.limit,
        after=query.after,
        run_id=query.run_id,
    )
    return page(list(found), more)


@routes.get(
    "/v1/threads/{thread_id}/messages/{message_id}", access="inference", answer=MessageRecord
)
async def get_message(request: web.Request) -> web.Response:
    """Describe one message of a thread."""
    info = request.match_info
    found = await store(request).message(owner(request), info["thread_id"], info["message_id"])
    return json_response(found.model_dump(mode="json"))
