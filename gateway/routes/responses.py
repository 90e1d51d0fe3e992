"""OpenAI Responses routes: POST /v1/responses, GET/DELETE /v1/responses/{id}, its input items.

Any worker answers a Responses request: it is decoded into the conversation model
(templates/codecs/responses.py) and sent like a chat. The state is the gateway's: with
`store` (the default, as at OpenAI) the response, its input and the conversation so far are
kept in Redis (registry/responses.py), so `previous_response_id` continues on any worker of
the model through any gateway process. Stored responses belong to the API key that made them.
"""

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import Call
from gateway.endpoints import Routes
from gateway.errors import InvalidRequest, NotFound
from gateway.observe import REQUEST_ID, TRACE
from gateway.routes._common import complete, json_response, open_stream, parse_with_raw, relay
from gateway.state import RESPONSES
from registry.responses import ConversationTooLong, StoredResponse
from templates.codecs import openai_chat, responses
from templates.codecs.openai_chat import messages_json
from templates.conversation import Conversation, Message, Reply
from templates.errors import CannotTranslate

routes = Routes("openai")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None


def _owner(request: web.Request) -> str:
    trace = request.get(TRACE)
    return (trace.key_id if trace is not None else None) or ""


def _missing(response_id: str) -> NotFound:
    return NotFound(
        f"no stored response {response_id!r} (it may have expired, been deleted, or belong to "
        "another API key)"
    )


@routes.post("/v1/responses", access="inference", body=ResponsesRequest, streams=True)
async def create(request: web.Request) -> web.StreamResponse:
    """Answer a Responses request, whole or as its typed events; store it unless told not to."""
    body, raw = await parse_with_raw(request, ResponsesRequest, "responses request")
    store = request.app[RESPONSES]
    owner = _owner(request)
    history: tuple[Message, ...] = ()
    if body.previous_response_id:
        earlier = await store.get(body.previous_response_id, owner)
        if earlier is None:
            raise _missing(body.previous_response_id)
        history = openai_chat.decode_request({"messages": earlier.history}).messages
    try:
        conv = responses.decode_request(raw, history)
        given = responses.input_messages(raw["input"])
    except CannotTranslate as exc:
        raise InvalidRequest(str(exc)) from None
    call = Call(
        "openai",
        "chat",
        None,
        stream=body.stream,
        decode=lambda: conv,
        request_id=request[REQUEST_ID],
    )
    ident = responses.response_id()

    async def keep(reply: Reply, response: dict[str, Any]) -> None:
        if not body.store:
            return
        turns = tuple(m for m in conv.messages if m.role != "system")
        after = messages_json(turns + responses.output_messages(reply))
        try:
            await store.put(StoredResponse(owner, response, messages_json(given), after))
        except ConversationTooLong as exc:
            raise InvalidRequest(str(exc)) from None

    if not body.stream:
        answer = await complete(request, body.model, call)
        reply = answer.reply or Reply("")
        response = responses.encode_answer(reply, ident=ident, model=body.model, body=raw)
        await keep(reply, response)
        return json_response(response)
    served = await open_stream(request, body.model, call)
    encoder = responses.ResponsesStream(ident=ident, model=body.model, body=raw)
    streamed = await relay(request, served.result, encoder)
    if encoder.reply is not None:
        done = responses.encode_answer(encoder.reply, ident=ident, model=body.model, body=raw)
        await keep(encoder.reply, done)
    return streamed


@routes.get("/v1/responses/{response_id}", access="inference")
async def retrieve(request: web.Request) -> web.Response:
    """A stored response."""
    response_id = request.match_info["response_id"]
    stored = await request.app[RESPONSES].get(response_id, _owner(request))
    if stored is None:
        raise _missing(response_id)
    return json_response(stored.response)


@routes.delete("/v1/responses/{response_id}", access="inference")
async def delete(request: web.Request) -> web.Response:
    """Forget a stored response."""
    response_id = request.match_info["response_id"]
    if not await request.app[RESPONSES].delete(response_id, _owner(request)):
        raise _missing(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@routes.get("/v1/responses/{response_id}/input_items", access="inference")
async def input_items(request: web.Request) -> web.Response:
    """The input a stored response was made from."""
    response_id = request.match_info["response_id"]
    stored = await request.app[RESPONSES].get(response_id, _owner(request))
    if stored is None:
        raise _missing(response_id)
    conv: Conversation = openai_chat.decode_request({"messages": stored.input})
    items = responses.input_items(conv.messages)
    return json_response(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
    )
