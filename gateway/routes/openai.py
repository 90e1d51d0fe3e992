"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Workers that speak OpenAI get the client's body with only the model renamed, and their
answers (streamed or not) come back as they are; any other worker's answer is wrapped into
OpenAI's shapes, its text streamed as chat.completion.chunk events.
"""

import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import Call
from gateway.endpoints import Routes
from gateway.failover import Answer
from gateway.observe import REQUEST_ID
from gateway.routes._common import (
    StreamShape,
    answer,
    chat_values,
    json_response,
    parse_with_raw,
    prompt_values,
    vectors,
)
from gateway.state import ROUTER
from templates import USER_PROMPT

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


@routes.get("/v1/models", access="inference")
async def models(request: web.Request) -> web.Response:
    """List every model that has at least one worker."""
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "llm-gateway"}
        for name in request.app[ROUTER].models()
    ]
    return json_response({"object": "list", "data": data})


@routes.post("/v1/chat/completions", access="inference", body=ChatCompletionRequest, streams=True)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Chat with a model, whole or as server-sent events."""
    body, raw = await parse_with_raw(request, ChatCompletionRequest, "chat completion request")
    messages = raw["messages"]
    values = chat_values(
        messages,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_tokens or body.max_completion_tokens,
    )
    call = Call("openai", "chat", values, raw, stream=body.stream, request_id=request[REQUEST_ID])
    ident = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def whole(result: Answer) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": "stop",
                }
            ],
        }

    return await answer(
        request,
        body.model,
        call,
        whole,
        _events(lambda text: chunk({"content": text}), chunk({}, "stop")),
    )


@routes.post("/v1/completions", access="inference", body=CompletionRequest, streams=True)
async def completions(request: web.Request) -> web.StreamResponse:
    """Complete a prompt, whole or as server-sent events."""
    body, raw = await parse_with_raw(request, CompletionRequest, "completion request")
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    values = prompt_values(
        prompt, temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_tokens
    )
    call = Call(
        "openai", "completion", values, raw, stream=body.stream, request_id=request[REQUEST_ID]
    )
    ident = "cmpl-" + secrets.token_hex(12)
    created = int(time.time())

    def shape(text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }

    return await answer(
        request,
        body.model,
        call,
        lambda result: shape(result.text, "stop"),
        _events(lambda text: _sse(shape(text, None)), _sse(shape("", "stop"))),
    )


@routes.post("/v1/embeddings", access="inference", body=EmbeddingRequest)
async def embeddings(request: web.Request) -> web.StreamResponse:
    """Embed text with a model whose workers serve embeddings."""
    body, raw = await parse_with_raw(request, EmbeddingRequest, "embedding request")
    call = Call(
        "openai",
        "embedding",
        {USER_PROMPT: body.input},
        raw,
        stream=False,
        request_id=request[REQUEST_ID],
    )
    usage = {"prompt_tokens": 0, "total_tokens": 0}

    def whole(result: Answer) -> dict[str, Any]:
        data = [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(vectors(result.value))
        ]
        return {"object": "list", "data": data, "model": body.model, "usage": usage}

    return await answer(request, body.model, call, whole)


def _events(encode: Callable[[str], bytes], last: bytes) -> StreamShape:
    return StreamShape(
        content_type="text/event-stream",
        encode=encode,
        finish=last + b"data: [DONE]\n\n",
        error=_error_event,
    )


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _error_event(message: str) -> bytes:
    error = {"error": {"message": message, "type": "api_error", "code": "upstream_error"}}
    return _sse(error) + b"data: [DONE]\n\n"
