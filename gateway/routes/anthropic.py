"""Anthropic Messages routes: POST /v1/messages and /v1/messages/count_tokens.

Anthropic-compatible workers (`"preset": "anthropic"`) get the client's body with only the
model renamed, streams relayed as they are. Any other worker is translated through the
conversation model (templates/codecs/anthropic.py): content blocks, tool use and results,
stop reasons and usage both ways, and the Messages event stream. API keys may come in
`x-api-key` as Anthropic's SDKs send them.
"""

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import Call
from gateway.endpoints import Routes
from gateway.errors import GatewayError
from gateway.failover import Answer
from gateway.observe import REQUEST_ID
from gateway.routes._common import answer, find_pool, json_response, parse_with_raw
from gateway.state import FAILOVER
from templates.codecs import anthropic
from templates.conversation import Reply

routes = Routes("anthropic")


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(BaseModel):
    """The fields the gateway reads; every other field is passed on to Anthropic workers."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop_sequences: list[str] | None = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]


class CannotCount(GatewayError):
    status, code, openai_type = 501, "cannot_count", "invalid_request_error"


@routes.post("/v1/messages", access="inference", body=MessagesRequest, streams=True)
async def messages(request: web.Request) -> web.StreamResponse:
    """Send a Messages request to a model, whole or as Anthropic's event stream."""
    body, raw = await parse_with_raw(request, MessagesRequest, "messages request")
    call = Call(
        "anthropic",
        "chat",
        raw,
        stream=body.stream,
        decode=lambda: anthropic.decode_request(raw),
        request_id=request[REQUEST_ID],
    )
    ident = anthropic.message_id()

    def whole(result: Answer) -> dict[str, Any]:
        return anthropic.encode_answer(result.reply or Reply(""), ident=ident, model=body.model)

    return await answer(
        request,
        body.model,
        call,
        whole,
        lambda: anthropic.MessagesStream(ident=ident, model=body.model),
    )


@routes.post("/v1/messages/count_tokens", access="inference", body=CountTokensRequest)
async def count_tokens(request: web.Request) -> web.StreamResponse:
    """Count a request's input tokens, where a worker of the model can count them."""
    body, raw = await parse_with_raw(request, CountTokensRequest, "count_tokens request")
    pool = find_pool(request, body.model)
    counters = [w for w in pool.workers if w.plan.protocol == "anthropic"]
    if not counters:
        raise CannotCount(
            f"model {body.model!r} has no worker that can count tokens (only Anthropic-"
            'compatible workers, "preset": "anthropic", answer count_tokens); the gateway '
            "does not guess a count"
        )
    result = await request.app[FAILOVER].count_tokens(pool, raw, counters)
    return json_response(result)
