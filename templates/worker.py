"""Compile everything about how to talk to one worker into a plan, once per registration."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from templates import placeholders, presets
from templates.codecs import Codec, TemplateAnswers, worker_codec
from templates.errors import TemplateError
from templates.extract import compile_extract
from templates.render import RequestPlan, bake_url, compile_request
from templates.stream import StreamFormat

Protocol = Literal["template", "openai", "ollama", "anthropic"]
OperationName = Literal["chat", "completion", "embedding"]
Streams = Literal["never", "always", "on_request"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One thing a worker can do (chat, completion, embedding) and how to ask for it.

    `codec` says how: a preset's protocol codec (the body is built from the conversation, the
    answer read in full: text, tool calls, finish reason, usage), or, for a template, the
    paths its answers are read by (the body is the template with its placeholders filled).
    """

    plan: RequestPlan
    codec: Codec
    streams: Streams  # does the answer come as a stream: never, always, or when asked to
    stream_format: StreamFormat | None
    path: str  # where a passthrough request goes, under the base URL
    # How the worker continues a partial answer (a stream resumed after another worker
    # failed midway, gateway/resume.py): the body fields that say "continue the final
    # assistant message" (empty when a final assistant message, or a longer prompt, is
    # continued as it is). None: the preset does not declare that the worker can.
    resume: Mapping[str, Any] | None = None

    @property
    def url(self) -> str:
        return self.plan.url.render({})

    @property
    def templated(self) -> bool:
        return isinstance(self.codec, TemplateAnswers)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    protocol: Protocol
    base_url: str
    operations: Mapping[str, Operation]


def _answers(
    response_extract: str,
    stream_extract: str,
    streams: bool,
    usage_extract: Mapping[str, str] | None,
    finish_reason_extract: str,
) -> TemplateAnswers:
    return TemplateAnswers(
        compile_extract(response_extract),
        compile_extract(stream_extract) if streams else None,
        {name: compile_extract(path) for name, path in (usage_extract or {}).items()} or None,
        compile_extract(finish_reason_extract) if finish_reason_extract else None,
    )


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
    usage_extract: Mapping[str, str] | None = None,
    finish_reason_extract: str = "",
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
        answers = _answers(
            response_extract, stream_extract, is_stream, usage_extract, finish_reason_extract
        )
        fmt = stream_format if is_stream else None
        op = Operation(plan, answers, "always" if is_stream else "never", fmt, "")
        return WorkerPlan("template", url, {"chat": op, "completion": op})

    data = presets.get(preset)
    given = {name.lower() for name in header}
    defaults = {k: v for k, v in data.get("headers", {}).items() if k.lower() not in given}
    header = {**defaults, **header}
    operations: dict[str, Operation] = {}
    for name, spec in data["operations"].items():
        # A preset's chat may be given its own template: it is then read like a template's.
        custom = name == "chat" and (body is not None or bool(response_extract))
        fmt = (stream_format if custom and stream_format else None) or spec.get("stream_format")
        codec: Codec
        if custom:
            codec = _answers(
                response_extract or spec["response_extract"],
                stream_extract or spec.get("stream_extract", ""),
                fmt is not None,
                usage_extract,
                finish_reason_extract,
            )
            op_body = body if body is not None else spec["body"]
        else:
            codec = worker_codec(data["protocol"], name)
            op_body = spec["body"]
        operations[name] = Operation(
            compile_request("POST", url + spec["path"], header, op_body),
            codec,
            "on_request" if fmt else "never",
            fmt,
            spec["path"],
            None if custom else spec.get("resume"),
        )
    return WorkerPlan(data["protocol"], url, operations)
