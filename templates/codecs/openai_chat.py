"""OpenAI Chat Completions: a client's request and answer, and a worker's, in the one model."""

from collections.abc import Mapping
from typing import Any

import orjson

from templates.codecs._common import StreamEncoder, as_dict, json_doc, sse, tool_call_id
from templates.conversation import (
    Conversation,
    Event,
    Finish,
    Image,
    Message,
    Params,
    Part,
    Reply,
    Role,
    Start,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
    finish_reason,
)
from templates.errors import CannotTranslate, ExtractError

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


# A client's request.


def decode_request(body: Mapping[str, Any]) -> Conversation:
    """Read an OpenAI chat request (already checked for its basic shape) into the model."""
    options = body.get("stream_options")
    return Conversation(
        messages=tuple(_message(m, i) for i, m in enumerate(body.get("messages") or ())),
        params=params(body, max_tokens=body.get("max_completion_tokens") or body.get("max_tokens")),
        tools=tools_of(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
    )


def params(body: Mapping[str, Any], *, max_tokens: Any) -> Params:
    """Sampling parameters of an OpenAI request (chat or completions)."""
    stop = body.get("stop")
    n = body.get("n")
    fmt = body.get("response_format")
    return Params(
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        max_tokens=max_tokens,
        stop=(stop,)
        if isinstance(stop, str)
        else tuple(s for s in stop or () if isinstance(s, str)),
        seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        n=n if isinstance(n, int) and n > 0 else 1,
        response_format=fmt if isinstance(fmt, dict) and fmt.get("type") != "text" else None,
    )


def _message(raw: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise CannotTranslate(f"{where} must be an object with a role and content")
    role = _ROLES.get(str(raw.get("role")))
    if role is None:
        raise CannotTranslate(
            f"{where} has role {raw.get('role')!r}; use system, developer, user, assistant or tool"
        )
    calls = tuple(
        _tool_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(raw.get("tool_calls") or ())
    )
    return Message(
        role,
        _content(raw.get("content"), where),
        calls,
        tool_call_id=raw.get("tool_call_id") if role == "tool" else None,
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
    )


def _content(raw: Any, where: str) -> str | tuple[Part, ...]:
    if raw is None or isinstance(raw, str):
        return raw or ""
    if not isinstance(raw, list):
        raise CannotTranslate(f"{where}.content must be a string or a list of parts")
    parts: list[Part] = []
    for i, part in enumerate(raw):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(Text(str(part.get("text", ""))))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise CannotTranslate(f"{where}.content[{i}].image_url needs a url")
            parts.append(Image(url))
        else:
            raise CannotTranslate(
                f"{where}.content[{i}] is a {kind!r} part; this gateway carries text and "
                "image_url parts to workers of other protocols"
            )
    return tuple(parts)


def _tool_call(raw: Any, where: str) -> ToolCall:
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise CannotTranslate(f"{where} needs a function with a name")
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return ToolCall(str(raw.get("id") or tool_call_id()), function["name"], arguments)


def tools_of(raw: Any) -> tuple[Tool, ...]:
    """The function tools of an OpenAI (or Ollama: the same shape) request."""
    found: list[Tool] = []
    for i, tool in enumerate(raw or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise CannotTranslate(f"tools[{i}] must be a function tool with a name")
        parameters = function.get("parameters")
        found.append(
            Tool(
                function["name"],
                function.get("description"),
                parameters if isinstance(parameters, dict) else None,
            )
        )
    return tuple(found)


def _tool_choice(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict):
        function = raw.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


# A worker's request.


def encode_request(conv: Conversation, model: str, stream: bool) -> dict[str, Any]:
    """The body an OpenAI worker gets for `conv`."""
    body: dict[str, Any] = {"model": model, "messages": messages_json(conv.messages)}
    body.update(params_json(conv.params))
    if conv.tools:
        body["tools"] = tools_json(conv.tools)
        if conv.tool_choice in ("auto", "none", "required"):
            body["tool_choice"] = conv.tool_choice
        elif conv.tool_choice:
            body["tool_choice"] = {"type": "function", "function": {"name": conv.tool_choice}}
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}  # usage comes in a last chunk
    return body


def params_json(p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "max_tokens", "seed", "response_format"):
        value = getattr(p, name)
        if value is not None:
            out[name] = value
    if p.stop:
        out["stop"] = list(p.stop)
    if p.n != 1:
        out["n"] = p.n
    return out


def messages_json(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Messages in OpenAI's shape (also what a template's {MESSAGES} stands for)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role}
        if isinstance(m.content, str):
            item["content"] = m.content if m.content or not m.tool_calls else None
        else:
            item["content"] = [
                {"type": "text", "text": p.text}
                if isinstance(p, Text)
                else {"type": "image_url", "image_url": {"url": p.url}}
                for p in m.content
            ]
        if m.tool_calls:
            item["tool_calls"] = [_call_json(c) for c in m.tool_calls]
        if m.role == "tool":
            item["tool_call_id"] = m.tool_call_id or ""
            if m.name:
                item["name"] = m.name
        out.append(item)
    return out


def tools_json(tools: tuple[Tool, ...]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        function: dict[str, Any] = {"name": t.name}
        if t.description is not None:
            function["description"] = t.description
        if t.parameters is not None:
            function["parameters"] = t.parameters
        out.append({"type": "function", "function": function})
    return out


def _call_json(call: ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": call.arguments}
    return {"id": call.id, "type": "function", "function": function}


# A worker's answer.


def decode_answer(raw: bytes) -> Reply:
    """Read an OpenAI worker's chat answer."""
    doc = json_doc(raw)
    choice = _first_choice(doc)
    message = as_dict(choice.get("message"))
    calls = tuple(
        ToolCall(str(c.get("id") or tool_call_id()), str(f.get("name", "")), _arguments(f))
        for c in message.get("tool_calls") or ()
        if isinstance(c, dict)
        for f in (as_dict(c.get("function")),)
    )
    content = message.get("content")
    return Reply(
        content if isinstance(content, str) else "",
        calls,
        finish_reason(choice.get("finish_reason")),
        usage_of(doc.get("usage")),
    )


def decode_chunk(doc: dict[str, Any]) -> list[Event]:
    """Read one event of an OpenAI worker's chat stream."""
    events: list[Event] = []
    for choice in doc.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue  # the first choice only (n > 1 is passed through, never translated)
        delta = as_dict(choice.get("delta"))
        if delta.get("role"):
            events.append(Start())
        content = delta.get("content")
        if isinstance(content, str) and content:
            events.append(TextDelta(content))
        for i, call in enumerate(delta.get("tool_calls") or ()):
            if not isinstance(call, dict):
                continue
            function = as_dict(call.get("function"))
            index = call.get("index", i)
            events.append(
                ToolCallDelta(
                    index if isinstance(index, int) else i,
                    call.get("id"),
                    function.get("name"),
                    _arguments(function),
                )
            )
        reason = finish_reason(choice.get("finish_reason"))
        if reason is not None:
            events.append(Finish(reason))
    usage = usage_of(doc.get("usage"))
    if usage is not None:
        events.append(UsageReport(usage))
    return events


def _first_choice(doc: dict[str, Any]) -> dict[str, Any]:
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ExtractError(
            "the worker's answer has no choices[0]", orjson.dumps(doc).decode(), "it was"
        )
    return choices[0]


def _arguments(function: dict[str, Any]) -> str:
    arguments = function.get("arguments", "")
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def usage_of(raw: Any) -> Usage | None:
    """OpenAI usage (chat, completions, embeddings) or None when absent or unreadable."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, cached if isinstance(cached, int) else None)


def usage_json(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


# The client's answer.


def client_finish(reply: Reply) -> str:
    """The finish_reason a client sees: what the worker said; tool calls made say so."""
    if reply.tool_calls and reply.finish in (None, "stop"):
        return "tool_calls"
    return reply.finish or "stop"


def encode_answer(reply: Reply, *, ident: str, created: int, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = [_call_json(c) for c in reply.tool_calls]
        message["content"] = reply.text or None
    out: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": client_finish(reply)}],
    }
    if reply.usage is not None:
        out["usage"] = usage_json(reply.usage)
    return out


class ChatStream(StreamEncoder):
    """A translated answer as OpenAI chat.completion.chunk events.

    The first event always carries `role: "assistant"` (the SDKs' stream helpers need it);
    the finish reason follows the last delta; usage comes in its own last chunk, with no
    choices, only when the client asked for it (`stream_options.include_usage`) and the worker
    said it.
    """

    content_type = "text/event-stream"

    def __init__(self, *, ident: str, created: int, model: str, include_usage: bool) -> None:
        self._head = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage
        self._started = False
        self._tools = False
        self._finish: str | None = None
        self._usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        doc = {**self._head, "choices": [choice]}
        return sse(self.noted(doc) if finish is not None else doc)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self._start() + self._chunk({"content": event.text})
        if isinstance(event, ToolCallDelta):
            self._tools = True
            call: dict[str, Any] = {"index": event.index}
            if event.id is not None or event.name is not None:
                call["id"] = event.id or tool_call_id()
                call["type"] = "function"
                call["function"] = {"name": event.name or "", "arguments": event.arguments}
            else:
                call["function"] = {"arguments": event.arguments}
            return self._start() + self._chunk({"tool_calls": [call]})
        if isinstance(event, Start):
            return self._start()
        if isinstance(event, Finish):
            self._finish = event.reason
        elif isinstance(event, UsageReport):
            self._usage = event.usage
        return b""

    def end(self) -> bytes:
        finish = self._finish or "stop"
        if self._tools and finish == "stop":
            finish = "tool_calls"
        out = self._start() + self._chunk({}, finish)
        if self._include_usage and self._usage is not None:
            out += sse({**self._head, "choices": [], "usage": usage_json(self._usage)})
        return out + b"data: [DONE]\n\n"

    def error(self, message: str) -> bytes:
        error = {"error": {"message": message, "type": "api_error", "code": "upstream_error"}}
        return sse(error) + b"data: [DONE]\n\n"
