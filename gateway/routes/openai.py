"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Workers that speak OpenAI get the client's body with only the model renamed, and their
answers (streamed or not) come back as they are. For any other worker the request is decoded
into the conversation model and the answer encoded back into OpenAI's shapes
(templates/codecs/): roles, tool calls, finish reasons and usage carried both ways.
"""

import secrets
import time
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import Call
from gateway.endpoints import Routes
from gateway.failover import Answer
from gateway.observe import REQUEST_ID
from gateway.routes._common import answer, find_pool, json_response, parse_with_raw
from gateway.state import ROUTER
from templates.codecs import embeddings, openai_chat, openai_completions
from templates.conversation import Reply

routes = Routes("openai")

Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Tokens = Annotated[int, Field(ge=1)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The fields the gateway reads; every other field is passed on to OpenAI workers."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: Tokens | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[str], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Tokens | None = None


def _model_entry(request: web.Request, name: str) -> dict[str, Any]:
    workers = list(request.app[ROUTER].workers(name))
    first = min(workers, key=lambda w: w.record.registered_at, default=None)
    return {
        "id": name,
        "object": "model",
        "created": int(first.record.registered_at) if first is not None else 0,
        "owned_by": (first.record.owner if first is not None else "") or "llm-gateway",
    }


@routes.get("/v1/models", access="inference")
async def models(request: web.Request) -> web.Response:
    """List every model that has at least one worker."""
    data = [_model_entry(request, name) for name in request.app[ROUTER].models()]
    return json_response({"object": "list", "data": data})


@routes.get("/v1/models/{model}", access="inference")
async def model(request: web.Request) -> web.Response:
    """Describe one model: when its first worker was registered and by whom."""
    name = request.match_info["model"]
    find_pool(request, name)  # 404 naming the models there are
    return json_response(_model_entry(request, name))


@routes.post("/v1/chat/completions", access="inference", body=ChatCompletionRequest, streams=True)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Chat with a model, whole or as server-sent events."""
    body, raw = await parse_with_raw(request, ChatCompletionRequest, "chat completion request")
    call = Call(
        "openai",
        "chat",
        raw,
        stream=body.stream,
        decode=lambda: openai_chat.decode_request(raw),
        request_id=request[REQUEST_ID],
    )
    ident = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())

    def whole(result: Answer) -> dict[str, Any]:
        reply = result.reply or Reply("")
        return openai_chat.encode_answer(reply, ident=ident, created=created, model=body.model)

    def stream() -> openai_chat.ChatStream:
        return openai_chat.ChatStream(
            ident=ident, created=created, model=body.model, include_usage=_include_usage(raw)
        )

    return await answer(request, body.model, call, whole, stream)


@routes.post("/v1/completions", access="inference", body=CompletionRequest, streams=True)
async def completions(request: web.Request) -> web.StreamResponse:
    """Complete a prompt, whole or as server-sent events."""
    body, raw = await parse_with_raw(request, CompletionRequest, "completion request")
    call = Call(
        "openai",
        "completion",
        raw,
        stream=body.stream,
        decode=lambda: openai_completions.decode_request(raw),
        request_id=request[REQUEST_ID],
    )
    ident = "cmpl-" + secrets.token_hex(12)
    created = int(time.time())

    def whole(result: Answer) -> dict[str, Any]:
        reply = result.reply or Reply("")
        return openai_completions.encode_answer(
            reply, ident=ident, created=created, model=body.model
        )

    def stream() -> openai_completions.CompletionStream:
        return openai_completions.CompletionStream(
            ident=ident, created=created, model=body.model, include_usage=_include_usage(raw)
        )

    return await answer(request, body.model, call, whole, stream)


@routes.post("/v1/embeddings", access="inference", body=EmbeddingRequest)
async def embed(request: web.Request) -> web.StreamResponse:
    """Embed text with a model whose workers serve embeddings."""
    body, raw = await parse_with_raw(request, EmbeddingRequest, "embedding request")
    wanted = embeddings.decode_openai(raw)
    call = Call(
        "openai",
        "embedding",
        raw,
        stream=False,
        decode=lambda: wanted,
        request_id=request[REQUEST_ID],
    )

    def whole(result: Answer) -> dict[str, Any]:
        found = result.embeddings or embeddings.Embeddings(())
        return embeddings.encode_openai_answer(found, wanted, body.model)

    return await answer(request, body.model, call, whole)


def _include_usage(raw: dict[str, Any]) -> bool:
    options = raw.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
