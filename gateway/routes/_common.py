"""What every route family shares: reading JSON bodies, finding a pool, relaying streams."""

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.accounting import ACCOUNTANT
from gateway.affinity import affinity_of
from gateway.calls import Call
from gateway.errors import (
    BadRequest,
    InvalidRequest,
    invalid,
)
from gateway.failover import Answer
from gateway.fallback import Served
from gateway.metering import Counts, counts_of_answer, reply_text
from gateway.observe import TRACE, note_model, note_served, note_worker
from gateway.pool import Pool
from gateway.resume import Resuming
from gateway.state import DISPATCHER, ROUTER
from gateway.stream import Stream, StreamBroken
from gateway.tracing import incoming
from gateway.worker import Worker
from templates.codecs import EmbeddingCodec, StreamEncoder, TemplateAnswers, WorkerCodec
from templates.conversation import TextDelta, ToolCallDelta, Usage, UsageReport
from templates.errors import ExtractError

M = TypeVar("M", bound=BaseModel)

# Deeper bodies are refused: the JSON encoder that sends a body on to a worker stops at 254
# levels, and no real request comes near this.
MAX_JSON_DEPTH = 100


async def parse(request: web.Request, model: type[M], what: str) -> M:
    """Read the body and validate it as `model`; 400 when not JSON, 422 when invalid."""
    raw = await request.read()
    if not raw:
        raise BadRequest(f"{what} is empty; send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc, what) from None


async def parse_with_raw(
    request: web.Request, model: type[M], what: str
) -> tuple[M, dict[str, Any]]:
    """Like `parse`, also returning the body as a dict (passed through to same-protocol workers)."""
    raw = await request.read()
    if not raw:
        raise BadRequest(f"{what} is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    # Nesting deeper than the limit needs more openers than the limit: counting them is a scan
    # in C, and only a body with that many is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and not _shallow(data, MAX_JSON_DEPTH):
        raise BadRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels; flatten it")
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        raise invalid(exc, what) from None


def _shallow(doc: dict[str, Any], limit: int) -> bool:
    """Whether no container in `doc` is nested deeper than `limit` levels."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def json_response(data: Any, status: int = 200) -> web.Response:
    """Serialise `data` with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def complete(request: web.Request, model: str, call: Call) -> Answer:
    """Get a whole answer for `call` from `model` (or what stands in for it: an alias's
    choice, a fallback), noting who answered for the access log and X-Gateway-Model."""
    note_model(request, model)
    _trace(request, call)
    served = await request.app[DISPATCHER].complete(model, call, affinity_of(request, call))
    answer = served.result
    note_served(request, served.model)
    worker = answer.worker
    note_worker(request, worker.label, tries=answer.tries, upstream_s=answer.upstream_s)
    usage: Usage | Counts | None
    completion: str | int = 0
    if answer.raw is not None:
        usage = counts_of_answer(answer.raw, worker.plan.protocol)
        if usage is None:
            completion = _text_of(worker, call, answer.raw)
    elif answer.reply is not None:
        usage = answer.reply.usage
        if usage is None:
            completion = reply_text(answer.reply)
    else:
        usage = answer.embeddings.usage if answer.embeddings is not None else None
    request.app[ACCOUNTANT].account(
        request[TRACE], served.model, worker, usage, call=call, completion=completion
    )
    return answer


def _trace(request: web.Request, call: Call) -> None:
    """Give `call` the request's span (OpenTelemetry on) or the client's trace context."""
    span = request[TRACE].span
    if span is not None:
        call.span = span
    else:
        call.trace_headers = incoming(request)


def _text_of(worker: Worker, call: Call, raw: bytes) -> str:
    """The text of a passthrough answer that carried no usage, for an estimate."""
    codec = worker.plan.operations[call.op].codec
    if isinstance(codec, EmbeddingCodec) or not isinstance(codec, WorkerCodec | TemplateAnswers):
        return ""
    try:
        return reply_text(codec.answer(raw))
    except ExtractError:
        return ""


def find_pool(request: web.Request, model: str) -> Pool:
    """Return the model's own pool (no alias, no fallback), or raise 404 / 503."""
    router = request.app[ROUTER]
    pool = router.pool(model)
    if pool is not None:
        return pool
    raise router.nowhere(model)


def check_model(request: web.Request, model: str) -> None:
    """Raise 404 / 503 unless a call for `model` has somewhere to go: its own pool, an
    alias, fallbacks (for work that is accepted before it is dispatched: a run)."""
    router = request.app[ROUTER]
    if not router.knows(model):
        raise router.nowhere(model)


async def open_stream(request: web.Request, model: str, call: Call) -> Served[Stream | Resuming]:
    """Start a streamed answer for `call` from `model` (or what stands in for it)."""
    note_model(request, model)
    _trace(request, call)
    served = await request.app[DISPATCHER].open_stream(model, call, affinity_of(request, call))
    note_served(request, served.model)
    return served


async def answer(
    request: web.Request,
    model: str,
    call: Call,
    whole: Callable[[Answer], Any],
    encoder: Callable[[], StreamEncoder] | None = None,
) -> web.StreamResponse:
    """Answer `call` whole (the worker's own JSON, or `whole` of the answer) or as a stream."""
    if not call.stream or encoder is None:
        result = await complete(request, model, call)
        if result.raw is not None:
            return web.Response(body=result.raw, content_type="application/json")
        return json_response(whole(result))
    served = await open_stream(request, model, call)
    return await relay(request, served.result, encoder(), call=call)


async def relay(
    request: web.Request,
    stream: Stream | Resuming,
    encoder: StreamEncoder,
    *,
    call: Call | None = None,
) -> web.StreamResponse:
    """Send `stream` to the client as it arrives; end with an error event if the worker dies.

    Events (a translated answer) are encoded by the client's `encoder`, which also closes the
    stream; bytes (a same-protocol worker's own stream) are relayed untouched, its own end
    marker included. If the client goes away, the handler is cancelled and the `finally`
    closes the worker's connection at once. However the stream ends, its usage is accounted
    (`call`, the request, is what a prompt is estimated from when the worker said nothing).
    """
    response = web.StreamResponse(
        headers={
            "Content-Type": encoder.content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    note_worker(request, stream.worker.label, tries=stream.tries)
    transport = request.transport
    direct = stream.relayed and transport is not None and request.version >= (1, 1)
    if direct:
        response.enable_chunked_encoding()
    usage: Usage | None = None
    text: list[str] = []  # a translated answer's text, for an estimate
    try:
        await response.prepare(request)  # a StreamResponse sends its head at once
        try:
            if direct and transport is not None and isinstance(stream, Stream):
                await stream.forward(_ChunkedSink(transport))
            else:
                event = encoder.event
                async for piece in stream.pieces():
                    if isinstance(piece, bytes):
                        data = piece
                    else:
                        if isinstance(piece, TextDelta):
                            text.append(piece.text)
                        elif isinstance(piece, UsageReport):
                            usage = piece.usage
                        elif isinstance(piece, ToolCallDelta):
                            text.append(piece.arguments)
                        data = event(piece)
                    if data:
                        await response.write(data)
                if not stream.passthrough:
                    encoder.note = stream.note
                    await response.write(encoder.end())
        except StreamBroken as exc:
            await response.write(encoder.error(str(exc)))
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; closing the worker's side is all there is to do
    finally:
        generation_s = stream.generation_s()
        await stream.aclose()
        if stream.passthrough:
            usage = stream.usage
            completion: str | int = stream.estimated_completion()
        else:
            completion = "".join(text)
        worker = stream.worker
        request.app[ACCOUNTANT].account(
            request[TRACE],
            worker.record.model_name,
            worker,
            usage,
            call=call,
            completion=completion,
            generation_s=generation_s,
        )
    return response


class _ChunkedSink:
    """The client's socket as `Stream.forward` writes to it: HTTP/1.1 chunks, written at once.

    This skips aiohttp's response writer for the body pieces (the head before and the last
    chunk after still go through it), the cheapest way from the worker's socket to the client's.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            return  # the client left; its handler is being cancelled
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def backlog(self) -> int:
        return self._transport.get_write_buffer_size()
