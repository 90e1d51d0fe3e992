"""What a client asked for (`Call`), and that call made into one worker's request.

A worker is called one of three ways. When it speaks the client's own protocol (an OpenAI
client and an `openai` worker) the client's body is passed through with only the model name
changed, and the client's request is never decoded further. Otherwise the request is decoded
once into the conversation model (templates/conversation.py) and the worker's codec encodes
its body from it; a template worker gets its template with the placeholders filled from it.
"""

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import orjson

from gateway.worker import Worker
from templates import MODEL_NAME, STREAM, Operation, OperationName, RenderedRequest
from templates.codecs import EmbeddingCodec, TemplateAnswers
from templates.codecs.template import values as template_values
from templates.errors import CannotTranslate

Family = Literal["seed", "openai", "ollama", "anthropic"]


class Call:
    """One client request as the request path needs it."""

    __slots__ = (
        "_decode",
        "_decoded",
        "body",
        "continues",
        "family",
        "op",
        "request_id",
        "span",
        "stream",
        "trace_headers",
    )

    def __init__(
        self,
        family: Family,
        op: OperationName,
        body: Mapping[str, Any] | None,
        *,
        stream: bool,
        decode: Callable[[], Any],
        request_id: str = "",
        continues: bool = False,
    ) -> None:
        self.family = family
        self.op = op
        self.body = body  # the client's own JSON, for same-protocol workers
        self.stream = stream
        self.request_id = request_id  # sent to the worker as X-Request-ID
        # The conversation ends in a partial answer for the worker to continue (a resumed
        # stream, gateway/resume.py): its operation's `resume` fields go into the body.
        self.continues = continues
        self._decode = decode
        self._decoded: Any = None
        # W3C trace context for the worker: the client's, or the attempt's span (gateway/tracing.py)
        self.trace_headers: dict[str, str] | None = None
        self.span: Any = None  # the request's RequestSpan when OpenTelemetry is on

    def request(self) -> Any:
        """The request in the conversation model (a Conversation, or an EmbeddingRequest),
        decoded on first use: a passthrough call never needs it."""
        if self._decoded is None:
            self._decoded = self._decode()
        return self._decoded


class WorkerRequest(NamedTuple):
    """A call made into one worker's HTTP request (a tuple: built on every attempt)."""

    op: Operation
    http: RenderedRequest
    passthrough: bool  # the client's own body, model renamed; the answer goes back as it is
    streamed: bool  # the worker answers as a stream (SSE or NDJSON)
    rename: bytes | None  # passthrough only: the client's model name, where the worker's differs
    # passthrough only: the gateway asked for a usage chunk the client did not (gateway/metering.py)
    strip_usage: bool = False


def prepare(worker: Worker, call: Call) -> WorkerRequest:
    """Build the request `worker` gets for `call`; raise CannotTranslate when it cannot be said
    in the worker's protocol (templates.errors)."""
    op = worker.plan.operations[call.op]
    record = worker.record
    served = record.served_model
    streamed = op.streams == "always" or (op.streams == "on_request" and call.stream)
    rename = None
    passthrough = strip_usage = False
    codec = op.codec
    protocol = worker.plan.protocol
    if protocol == call.family and call.body is not None:
        body = dict(call.body)
        body["model"] = served
        if op.streams != "never":
            body["stream"] = call.stream  # explicit: Ollama streams when it is left out
        if streamed and protocol == "openai":
            # Usage comes in a last chunk only when asked for; the tap drops it again when the
            # client did not ask (gateway/metering.py).
            options = body.get("stream_options")
            if not isinstance(options, dict) or not options.get("include_usage"):
                kept = options if isinstance(options, dict) else {}
                body["stream_options"] = {**kept, "include_usage": True}
                strip_usage = True
        http = op.plan.head({MODEL_NAME: served}, orjson.dumps(body))
        passthrough = True
        asked = str(call.body.get("model", ""))
        if asked != served:  # the worker's own name, or a fallback's: the client sees its own
            rename = asked.encode()
    elif isinstance(codec, TemplateAnswers):
        conv = call.request()
        if conv.tools and conv.tool_choice != "none":
            raise CannotTranslate(
                f"tools cannot be sent to this model's template worker ({worker.label}), whose "
                "body has no place for them; call it without tools, or register an openai or "
                "ollama preset worker for tool use"
            )
        values = template_values(conv, op.plan.names)
        values[MODEL_NAME] = served
        values[STREAM] = streamed
        http = op.plan.render(values)
    else:
        if isinstance(codec, EmbeddingCodec):
            data = codec.encode(call.request(), served)
        else:
            data = codec.encode(call.request(), served, streamed)
            if call.continues and op.resume:
                data.update(op.resume)
        http = op.plan.head({MODEL_NAME: served}, orjson.dumps(data))
    if call.request_id:
        http.headers["X-Request-ID"] = call.request_id
    if call.trace_headers is not None:
        http.headers.update(call.trace_headers)
    return WorkerRequest(op, http, passthrough, streamed, rename, strip_usage)
