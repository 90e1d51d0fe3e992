"""What a client asked for (`Call`), and that call made into one worker's request.

A worker is called one of two ways. When it speaks the client's own protocol (an OpenAI
client and an `openai` worker) the client's body is passed through with only the model name
changed; otherwise the worker's operation template is rendered with the call's values.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from gateway.worker import Worker
from templates import MODEL_NAME, STREAM, Operation, OperationName, RenderedRequest

Family = Literal["seed", "openai", "ollama"]


@dataclass(frozen=True, slots=True)
class Call:
    """One client request as the request path needs it."""

    family: Family
    op: OperationName
    values: Mapping[str, Any]  # placeholder values for template rendering
    body: Mapping[str, Any] | None  # the client's own JSON, for same-protocol workers
    stream: bool
    request_id: str = ""  # sent to the worker as X-Request-ID


class WorkerRequest(NamedTuple):
    """A call made into one worker's HTTP request (a tuple: built on every attempt)."""

    op: Operation
    http: RenderedRequest
    passthrough: bool  # the client's own body, model renamed; the answer goes back as it is
    streamed: bool  # the worker answers as a stream (SSE or NDJSON)
    rename: bytes | None  # passthrough only: the client's model name, where the worker's differs


def prepare(worker: Worker, call: Call) -> WorkerRequest:
    """Build the request `worker` gets for `call`."""
    op = worker.plan.operations[call.op]
    record = worker.record
    served = record.served_model
    streamed = op.streams == "always" or (op.streams == "on_request" and call.stream)
    rename = None
    if worker.plan.protocol == call.family and call.body is not None:
        body = dict(call.body)
        body["model"] = served
        if op.streams != "never":
            body["stream"] = call.stream  # explicit: Ollama streams when it is left out
        head = op.plan.render({MODEL_NAME: served})
        http = RenderedRequest("POST", head.url, head.headers, orjson.dumps(body))
        passthrough = True
        asked = str(call.body.get("model", ""))
        if asked != served:  # the worker's own name, or a fallback's: the client sees its own
            rename = asked.encode()
    else:
        values = dict(call.values)
        values[MODEL_NAME] = served
        values[STREAM] = streamed
        http = op.plan.render(values)
        passthrough = False
    if call.request_id:
        http.headers["X-Request-ID"] = call.request_id
    return WorkerRequest(op, http, passthrough, streamed, rename)
