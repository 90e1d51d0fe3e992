"""Ollama-compatible routes: /api/chat, /api/generate, /api/embed, /api/tags, /api/version.

Ollama streams NDJSON unless the request says `"stream": false`. Ollama workers get the
client's body with only the model renamed; other workers' answers are wrapped into Ollama's
shapes. A failure after the stream began ends it with an `{"error": ...}` line.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import Call
from gateway.endpoints import Routes
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

routes = Routes("ollama")

VERSION = "0.6.0"  # the Ollama API version whose shapes these routes follow


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    num_predict: int | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str = ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = True
    options: Options = Field(default_factory=Options)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    prompt: str = ""
    system: str | None = None
    stream: bool = True
    options: Options = Field(default_factory=Options)


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[str], Field(min_length=1)]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _max_tokens(options: Options) -> int | None:
    return options.num_predict if options.num_predict and options.num_predict > 0 else None


@routes.get("/api/tags", access="inference")
async def tags(request: web.Request) -> web.Response:
    """List every model that has at least one worker."""
    models = [
        {"name": name, "model": name, "modified_at": _now(), "size": 0, "digest": ""}
        for name in request.app[ROUTER].models()
    ]
    return json_response({"models": models})


@routes.get("/api/version", access="public")
async def version(request: web.Request) -> web.Response:
    """Answer the Ollama API version these routes follow."""
    return json_response({"version": VERSION})


@routes.post("/api/chat", access="inference", body=ChatRequest, streams=True)
async def chat(request: web.Request) -> web.StreamResponse:
    """Chat with a model; NDJSON stream unless `"stream": false`."""
    body, raw = await parse_with_raw(request, ChatRequest, "chat request")
    values = chat_values(
        raw["messages"],
        temperature=body.options.temperature,
        top_p=body.options.top_p,
        max_tokens=_max_tokens(body.options),
    )
    call = Call("ollama", "chat", values, raw, stream=body.stream, request_id=request[REQUEST_ID])

    def shape(text: str, done: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": body.model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": text},
            "done": done,
        }
        if done:
            out["done_reason"] = "stop"
        return out

    return await answer(request, body.model, call, lambda a: shape(a.text, True), _ndjson(shape))


@routes.post("/api/generate", access="inference", body=GenerateRequest, streams=True)
async def generate(request: web.Request) -> web.StreamResponse:
    """Complete a prompt; NDJSON stream unless `"stream": false`."""
    body, raw = await parse_with_raw(request, GenerateRequest, "generate request")
    values = prompt_values(
        body.prompt,
        system=body.system,
        temperature=body.options.temperature,
        top_p=body.options.top_p,
        max_tokens=_max_tokens(body.options),
    )
    call = Call(
        "ollama", "completion", values, raw, stream=body.stream, request_id=request[REQUEST_ID]
    )

    def shape(text: str, done: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": body.model,
            "created_at": _now(),
            "response": text,
            "done": done,
        }
        if done:
            out["done_reason"] = "stop"
        return out

    return await answer(request, body.model, call, lambda a: shape(a.text, True), _ndjson(shape))


@routes.post("/api/embed", access="inference", body=EmbedRequest)
async def embed(request: web.Request) -> web.StreamResponse:
    """Embed text with a model whose workers serve embeddings."""
    body, raw = await parse_with_raw(request, EmbedRequest, "embed request")
    call = Call(
        "ollama",
        "embedding",
        {USER_PROMPT: body.input},
        raw,
        stream=False,
        request_id=request[REQUEST_ID],
    )
    return await answer(
        request, body.model, call, lambda r: {"model": body.model, "embeddings": vectors(r.value)}
    )


def _ndjson(shape: Callable[[str, bool], dict[str, Any]]) -> StreamShape:
    return StreamShape(
        content_type="application/x-ndjson",
        encode=lambda text: orjson.dumps(shape(text, False)) + b"\n",
        finish=orjson.dumps(shape("", True)) + b"\n",
        error=lambda message: orjson.dumps({"error": message}) + b"\n",
    )
