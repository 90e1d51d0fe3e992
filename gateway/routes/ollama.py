"""Ollama-compatible routes: chat, generate, embed(dings), tags, show, ps, version.

Ollama streams NDJSON unless the request says `"stream": false`. Ollama workers get the
client's body with only the model renamed; for other workers the request is decoded into the
conversation model and the answer encoded into Ollama's shapes (templates/codecs/ollama.py):
`done_reason`, token counts and tool calls carried both ways. A failure after the stream
began ends it with an `{"error": ...}` line.
"""

from datetime import UTC, datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import Call
from gateway.endpoints import Routes
from gateway.errors import InvalidRequest, unknown_model
from gateway.failover import Answer
from gateway.observe import REQUEST_ID
from gateway.routes._common import answer, json_response, parse, parse_with_raw
from gateway.state import ROUTER
from gateway.worker import Worker
from templates.codecs import embeddings, ollama
from templates.conversation import Reply

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
    images: list[str] | None = None


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
    dimensions: Annotated[int, Field(ge=1)] | None = None


class LegacyEmbeddingsRequest(BaseModel):
    """Body of the older POST /api/embeddings: one prompt, one vector."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    prompt: str


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)] | None = None
    name: Annotated[str, Field(min_length=1)] | None = None  # the older spelling


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _workers(request: web.Request, name: str) -> list[Worker]:
    return list(request.app[ROUTER].workers(name))


def _tag(request: web.Request, name: str) -> dict[str, Any]:
    """A model as /api/tags lists it: what the gateway knows (no size, digest or family)."""
    workers = _workers(request, name)
    out: dict[str, Any] = {"name": name, "model": name}
    if workers:
        out["modified_at"] = _stamp(max(w.record.registered_at for w in workers))
    return out


@routes.get("/api/tags", access="inference")
async def tags(request: web.Request) -> web.Response:
    """List every model that has at least one worker."""
    return json_response({"models": [_tag(request, n) for n in request.app[ROUTER].models()]})


@routes.get("/api/ps", access="inference")
async def ps(request: web.Request) -> web.Response:
    """List the models that have a worker able to answer now."""
    router = request.app[ROUTER]
    running = []
    for name in router.models():
        pool = router.pool(name)
        if pool is not None and pool.candidates("chat", 1):
            running.append(_tag(request, name))
    return json_response({"models": running})


@routes.post("/api/show", access="inference", body=ShowRequest)
async def show(request: web.Request) -> web.Response:
    """Describe a model: what it can do, from its workers (nothing the gateway does not know)."""
    body = await parse(request, ShowRequest, "show request")
    name = body.model or body.name
    if not name:
        raise InvalidRequest('show request needs "model"')
    workers = _workers(request, name)
    if not workers:
        raise unknown_model(name, request.app[ROUTER].models(), lead=f"model {name!r} not found")
    capabilities = ["completion"]
    if any("embedding" in w.plan.operations for w in workers):
        capabilities.append("embedding")
    if all(w.plan.protocol != "template" for w in workers):
        capabilities.append("tools")  # template workers cannot carry tools
    return json_response(
        {
            "modified_at": _stamp(max(w.record.registered_at for w in workers)),
            "capabilities": capabilities,
            "details": {},
            "model_info": {},
        }
    )


@routes.get("/api/version", access="public")
async def version(request: web.Request) -> web.Response:
    """Answer the Ollama API version these routes follow."""
    return json_response({"version": VERSION})


@routes.post("/api/chat", access="inference", body=ChatRequest, streams=True)
async def chat(request: web.Request) -> web.StreamResponse:
    """Chat with a model; NDJSON stream unless `"stream": false`."""
    body, raw = await parse_with_raw(request, ChatRequest, "chat request")
    call = Call(
        "ollama",
        "chat",
        raw,
        stream=body.stream,
        decode=lambda: ollama.decode_chat(raw),
        request_id=request[REQUEST_ID],
    )

    def whole(result: Answer) -> dict[str, Any]:
        return ollama.encode_answer(result.reply or Reply(""), kind="chat", model=body.model)

    return await answer(
        request, body.model, call, whole, lambda: ollama.OllamaStream(kind="chat", model=body.model)
    )


@routes.post("/api/generate", access="inference", body=GenerateRequest, streams=True)
async def generate(request: web.Request) -> web.StreamResponse:
    """Complete a prompt; NDJSON stream unless `"stream": false`."""
    body, raw = await parse_with_raw(request, GenerateRequest, "generate request")
    call = Call(
        "ollama",
        "completion",
        raw,
        stream=body.stream,
        decode=lambda: ollama.decode_generate(raw),
        request_id=request[REQUEST_ID],
    )

    def whole(result: Answer) -> dict[str, Any]:
        return ollama.encode_answer(result.reply or Reply(""), kind="generate", model=body.model)

    def stream() -> ollama.OllamaStream:
        return ollama.OllamaStream(kind="generate", model=body.model)

    return await answer(request, body.model, call, whole, stream)


@routes.post("/api/embed", access="inference", body=EmbedRequest)
async def embed(request: web.Request) -> web.StreamResponse:
    """Embed text with a model whose workers serve embeddings."""
    body, raw = await parse_with_raw(request, EmbedRequest, "embed request")
    wanted = embeddings.decode_ollama(raw)
    call = Call(
        "ollama",
        "embedding",
        raw,
        stream=False,
        decode=lambda: wanted,
        request_id=request[REQUEST_ID],
    )

    def whole(result: Answer) -> dict[str, Any]:
        return embeddings.encode_ollama_answer(
            result.embeddings or embeddings.Embeddings(()), body.model
        )

    return await answer(request, body.model, call, whole)


@routes.post("/api/embeddings", access="inference", body=LegacyEmbeddingsRequest)
async def legacy_embeddings(request: web.Request) -> web.StreamResponse:
    """The older embeddings route: one prompt, `{"embedding": [...]}` back."""
    body, raw = await parse_with_raw(request, LegacyEmbeddingsRequest, "embeddings request")
    wanted = embeddings.decode_ollama(raw)
    # Never passed through: an Ollama worker is asked on /api/embed, in today's shape.
    call = Call(
        "ollama",
        "embedding",
        None,
        stream=False,
        decode=lambda: wanted,
        request_id=request[REQUEST_ID],
    )

    def whole(result: Answer) -> dict[str, Any]:
        found = result.embeddings or embeddings.Embeddings(())
        return embeddings.encode_ollama_answer(found, body.model, legacy=True)

    return await answer(request, body.model, call, whole)
