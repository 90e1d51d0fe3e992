"""OpenAI (legacy) Completions: one prompt in, its continuation out."""

from collections.abc import Mapping
from typing import Any

from templates.codecs._common import StreamEncoder, as_dict, json_doc, sse
from templates.codecs.openai_chat import params, params_json, usage_json, usage_of
from templates.conversation import (
    Conversation,
    Event,
    Finish,
    Message,
    Reply,
    TextDelta,
    Usage,
    UsageReport,
    finish_reason,
)
from templates.errors import ExtractError


def decode_request(body: Mapping[str, Any]) -> Conversation:
    """Read a completions request (one prompt: a string or a list of one) into the model."""
    prompt = body.get("prompt")
    text = prompt if isinstance(prompt, str) else str(prompt[0]) if prompt else ""
    options = body.get("stream_options")
    return Conversation(
        (Message("user", text),),
        params(body, max_tokens=body.get("max_tokens")),
        prompt=text,
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
    )


def encode_request(conv: Conversation, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": conv.last_user_text}
    body.update(params_json(conv.params))
    body.pop("response_format", None)  # not a completions field
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def decode_answer(raw: bytes) -> Reply:
    doc = json_doc(raw)
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ExtractError(
            "the worker's answer has no choices[0]", raw.decode(errors="replace"), "it was"
        )
    text = choices[0].get("text")
    return Reply(
        text if isinstance(text, str) else "",
        (),
        finish_reason(choices[0].get("finish_reason")),
        usage_of(doc.get("usage")),
    )


def decode_chunk(doc: dict[str, Any]) -> list[Event]:
    events: list[Event] = []
    for choice in doc.get("choices") or ():
        choice = as_dict(choice)
        if choice.get("index", 0) != 0:
            continue
        text = choice.get("text")
        if isinstance(text, str) and text:
            events.append(TextDelta(text))
        reason = finish_reason(choice.get("finish_reason"))
        if reason is not None:
            events.append(Finish(reason))
    usage = usage_of(doc.get("usage"))
    if usage is not None:
        events.append(UsageReport(usage))
    return events


def _shape(ident: str, created: int, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def encode_answer(reply: Reply, *, ident: str, created: int, model: str) -> dict[str, Any]:
    out = _shape(ident, created, model, reply.text, reply.finish or "stop")
    if reply.usage is not None:
        out["usage"] = usage_json(reply.usage)
    return out


class CompletionStream(StreamEncoder):
    content_type = "text/event-stream"

    def __init__(self, *, ident: str, created: int, model: str, include_usage: bool) -> None:
        self._ids = (ident, created, model)
        self._include_usage = include_usage
        self._finish: str | None = None
        self._usage: Usage | None = None

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return sse(_shape(*self._ids, event.text, None))
        if isinstance(event, Finish):
            self._finish = event.reason
        elif isinstance(event, UsageReport):
            self._usage = event.usage
        return b""

    def end(self) -> bytes:
        out = sse(self.noted(_shape(*self._ids, "", self._finish or "stop")))
        if self._include_usage and self._usage is not None:
            ident, created, model = self._ids
            usage = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage_json(self._usage),
            }
            out += sse(usage)
        return out + b"data: [DONE]\n\n"

    def error(self, message: str) -> bytes:
        error = {"error": {"message": message, "type": "api_error", "code": "upstream_error"}}
        return sse(error) + b"data: [DONE]\n\n"
