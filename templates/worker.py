"""Compile everything about how to talk to one worker into a plan, once per registration."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from templates import placeholders, presets
from templates.errors import TemplateError
from templates.extract import Extractor, compile_extract
from templates.render import RequestPlan, bake_url, compile_request
from templates.stream import StreamFormat

Protocol = Literal["template", "openai", "ollama"]
OperationName = Literal["chat", "completion", "embedding"]
Streams = Literal["never", "always", "on_request"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One thing a worker can do (chat, completion, embedding) and how to ask for it."""

    plan: RequestPlan
    extractor: Extractor
    streams: Streams  # does the answer come as a stream: never, always, or when asked to
    stream_format: StreamFormat | None
    stream_extractor: Extractor | None
    path: str  # where a passthrough request goes, under the base URL

    @property
    def url(self) -> str:
        return self.plan.url.render({})


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    protocol: Protocol
    base_url: str
    operations: Mapping[str, Operation]


def compile_worker(
    *,
    url: str,
    req_type: str = "POST",
    header: Mapping[str, str] | None = None,
    body: Any = None,
    response_extract: str = "",
    preset: str | None = None,
    is_stream: bool = False,
    stream_format: StreamFormat | None = None,
    stream_extract: str = "",
    model_name: str | None = None,
) -> WorkerPlan:
    """Check and compile a worker; raise TemplateError naming what is wrong.

    `model_name` is the name the worker serves the model under (fixed at registration): it is
    written into the URL now, so a URL rendered with no values (a passthrough request, the
    worker's label) still has it. Left None, {MODEL_NAME} in the URL is filled per request.
    A preset worker's `url` is its base URL or one of its endpoint URLs (presets.base_url).
    """
    header = header or {}
    if preset is not None:
        url = presets.base_url(preset, url)
    if model_name is not None:
        url = bake_url(url, {placeholders.MODEL_NAME: model_name})
    if preset is None:
        if is_stream and (stream_format is None or not stream_extract):
            raise TemplateError(
                'a streaming template worker ("is_stream": true) needs "stream_format" '
                '("sse" or "ndjson") and "stream_extract" (the path of each chunk\'s text)'
            )
        plan = compile_request(req_type, url, header, body)
        stream_extractor = compile_extract(stream_extract) if is_stream else None
        op = Operation(
            plan,
            compile_extract(response_extract),
            "always" if is_stream else "never",
            stream_format if is_stream else None,
            stream_extractor,
            "",
        )
        return WorkerPlan("template", url, {"chat": op, "completion": op})

    data = presets.get(preset)
    operations: dict[str, Operation] = {}
    for name, spec in data["operations"].items():
        custom = name == "chat"
        op_body = body if custom and body is not None else spec["body"]
        extract = response_extract if custom and response_extract else spec["response_extract"]
        fmt = (stream_format if custom and stream_format else None) or spec.get("stream_format")
        chunk_path = (stream_extract if custom and stream_extract else None) or spec.get(
            "stream_extract", ""
        )
        operations[name] = Operation(
            compile_request("POST", url + spec["path"], header, op_body),
            compile_extract(extract),
            "on_request" if fmt else "never",
            fmt,
            compile_extract(chunk_path) if fmt else None,
            spec["path"],
        )
    return WorkerPlan(data["protocol"], url, operations)
