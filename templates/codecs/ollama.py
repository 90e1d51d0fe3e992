"""Ollama's /api/chat and /api/generate: a client's request and answer, and a worker's."""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from templates.codecs._common import StreamEncoder, as_dict, count, json_doc, tool_call_id
from templates.codecs.openai_chat import tools_of
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
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
    finish_reason,
)
from templates.errors import CannotTranslate

Kind = Literal["chat", "generate"]

_ROLES: dict[str, Role] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
# What the first bytes of a base64 image say its type is (Ollama sends images bare).
_MAGIC = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lGO": "image/gif", "UklGR": "image/webp"}


def now() -> str:
    """Ollama's `created_at`: UTC, RFC 3339 with a Z, taken when each line is written."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# A client's request.


def decode_chat(body: Mapping[str, Any]) -> Conversation:
    """Read an Ollama chat request into the model."""
    messages: list[Message] = []
    open_calls: list[ToolCall] = []  # calls not answered yet: a tool result takes its id
    for i, raw in enumerate(body.get("messages") or ()):
        message = _message(raw, i, open_calls)
        if message.tool_calls:
            open_calls = list(message.tool_calls)
        messages.append(message)
    return Conversation(
        tuple(messages), _params(body), tools_of(body.get("tools")), tool_choice=None
    )


def decode_generate(body: Mapping[str, Any]) -> Conversation:
    """Read an Ollama generate request into the model: a system prompt and one prompt."""
    prompt = body.get("prompt") or ""
    messages = []
    if body.get("system"):
        messages.append(Message("system", str(body["system"])))
    images = _images(body.get("images"), "images")
    messages.append(Message("user", (Text(prompt), *images) if images else prompt))
    return Conversation(tuple(messages), _params(body), prompt=prompt)


def _message(raw: Any, index: int, open_calls: list[ToolCall]) -> Message:
    where = f"messages[{index}]"
    role = _ROLES.get(str(raw.get("role"))) if isinstance(raw, dict) else None
    if role is None:
        raise CannotTranslate(f"{where} needs a role of system, user, assistant or tool")
    text = raw.get("content") or ""
    images = _images(raw.get("images"), f"{where}.images")
    content: str | tuple[Part, ...] = (Text(text), *images) if images else text
    calls = tuple(
        ToolCall(tool_call_id(), str(f.get("name", "")), _arguments(f.get("arguments")))
        for c in raw.get("tool_calls") or ()
        for f in (as_dict(as_dict(c).get("function")),)
    )
    if role != "tool":
        return Message(role, content, calls)
    name = raw.get("tool_name") or raw.get("name")
    answered = next(
        (c for c in open_calls if c.name == name), open_calls[0] if open_calls else None
    )
    if answered is not None:
        open_calls.remove(answered)
    return Message(
        "tool", content, tool_call_id=answered.id if answered else None, name=name or None
    )


def _images(raw: Any, where: str) -> tuple[Image, ...]:
    if not raw:
        return ()
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise CannotTranslate(f"{where} must be a list of base64 strings")
    return tuple(Image(f"data:{_media_type(data)};base64,{data}") for data in raw)


def _media_type(data: str) -> str:
    return next((kind for magic, kind in _MAGIC.items() if data.startswith(magic)), "image/png")


def _params(body: Mapping[str, Any]) -> Params:
    options = as_dict(body.get("options"))
    stop = options.get("stop")
    predict = options.get("num_predict")
    fmt = body.get("format")
    response_format: dict[str, Any] | None = None
    if fmt == "json":
        response_format = {"type": "json_object"}
    elif isinstance(fmt, dict):
        response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": fmt}}
    return Params(
        temperature=options.get("temperature"),
        top_p=options.get("top_p"),
        top_k=options.get("top_k") if isinstance(options.get("top_k"), int) else None,
        max_tokens=predict if isinstance(predict, int) and predict > 0 else None,
        stop=(stop,)
        if isinstance(stop, str)
        else tuple(s for s in stop or () if isinstance(s, str)),
        seed=options.get("seed") if isinstance(options.get("seed"), int) else None,
        response_format=response_format,
    )


def _arguments(raw: Any) -> str:
    return raw if isinstance(raw, str) else orjson.dumps(raw if raw is not None else {}).decode()


# A worker's request.


def encode_chat(conv: Conversation, model: str, stream: bool) -> dict[str, Any]:
    """The body an Ollama worker's /api/chat gets for `conv`."""
    body: dict[str, Any] = {"model": model, "messages": [_message_json(m) for m in conv.messages]}
    if conv.tools and conv.tool_choice != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": t.parameters or {"type": "object"},
                },
            }
            for t in conv.tools
        ]
    return _finish_body(body, conv, stream)


def encode_generate(conv: Conversation, model: str, stream: bool) -> dict[str, Any]:
    """The body an Ollama worker's /api/generate gets for `conv` (a plain prompt)."""
    body: dict[str, Any] = {"model": model, "prompt": conv.last_user_text}
    if conv.system is not None:
        body["system"] = conv.system
    images = [_bare(i) for m in conv.messages if m.role == "user" for i in m.images]
    if images:
        body["images"] = images
    return _finish_body(body, conv, stream)


def _finish_body(body: dict[str, Any], conv: Conversation, stream: bool) -> dict[str, Any]:
    p = conv.params
    if p.n != 1:
        raise CannotTranslate(
            f"n={p.n} asks for several answers; this model's Ollama workers give one"
        )
    body["stream"] = stream  # explicit: Ollama streams when it is left out
    options: dict[str, Any] = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("max_tokens", "num_predict"),
        ("seed", "seed"),
    ):
        value = getattr(p, ours)
        if value is not None:
            options[theirs] = value
    if p.stop:
        options["stop"] = list(p.stop)
    if options:
        body["options"] = options
    fmt = p.response_format
    if fmt is not None:
        schema = as_dict(fmt.get("json_schema")).get("schema")
        body["format"] = schema if fmt.get("type") == "json_schema" and schema else "json"
    return body


def _message_json(m: Message) -> dict[str, Any]:
    item: dict[str, Any] = {"role": m.role, "content": m.text}
    if m.images:
        item["images"] = [_bare(i) for i in m.images]
    if m.tool_calls:
        item["tool_calls"] = [
            {"function": {"name": c.name, "arguments": _argument_object(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.role == "tool" and m.name:
        item["tool_name"] = m.name
    return item


def _bare(image: Image) -> str:
    inline = image.inline
    if inline is None:
        raise CannotTranslate(
            "this model's Ollama workers take images only inline: send the image as a "
            "data:image/...;base64,... URL instead of a link"
        )
    return inline[1]


def _argument_object(arguments: str) -> Any:
    try:
        return orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        raise CannotTranslate(
            f"a tool call's arguments are not JSON ({arguments[:80]!r}); Ollama workers need "
            "them as an object"
        ) from None


# A worker's answer.


def decode_chat_answer(raw: bytes) -> Reply:
    return _reply(json_doc(raw), "chat")


def decode_generate_answer(raw: bytes) -> Reply:
    return _reply(json_doc(raw), "generate")


def _reply(doc: dict[str, Any], kind: Kind) -> Reply:
    if kind == "chat":
        message = as_dict(doc.get("message"))
        text = message.get("content")
        calls = tuple(
            ToolCall(tool_call_id(), str(f.get("name", "")), _arguments(f.get("arguments")))
            for c in message.get("tool_calls") or ()
            for f in (as_dict(as_dict(c).get("function")),)
        )
    else:
        text, calls = doc.get("response"), ()
    return Reply(
        text if isinstance(text, str) else "",
        calls,
        finish_reason(doc.get("done_reason")),
        usage_of(doc),
    )


def chunk_decoder(kind: Kind) -> Callable[[dict[str, Any]], list[Event]]:
    """Read one line of an Ollama worker's stream; tool calls come whole, numbered in order."""
    calls = 0

    def decode(doc: dict[str, Any]) -> list[Event]:
        nonlocal calls
        events: list[Event] = []
        if kind == "chat":
            message = as_dict(doc.get("message"))
            text = message.get("content")
            for c in message.get("tool_calls") or ():
                f = as_dict(as_dict(c).get("function"))
                events.append(
                    ToolCallDelta(
                        calls,
                        tool_call_id(),
                        str(f.get("name", "")),
                        _arguments(f.get("arguments")),
                    )
                )
                calls += 1
        else:
            text = doc.get("response")
        if isinstance(text, str) and text:
            events.insert(0, TextDelta(text))
        if doc.get("done"):
            events.append(Finish(finish_reason(doc.get("done_reason")) or "stop"))
            usage = usage_of(doc)
            if usage is not None:
                events.append(UsageReport(usage))
        return events

    return decode


def usage_of(doc: dict[str, Any]) -> Usage | None:
    prompt, completion = count(doc.get("prompt_eval_count")), count(doc.get("eval_count"))
    if prompt is None and completion is None:
        return None
    return Usage(prompt or 0, completion or 0)


# The client's answer.


def _done_reason(reply: Reply) -> str:
    return "length" if reply.finish == "length" else "stop"


def _counts(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {"prompt_eval_count": usage.prompt_tokens, "eval_count": usage.completion_tokens}


def _calls_json(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        try:
            arguments = orjson.loads(c.arguments) if c.arguments else {}
        except orjson.JSONDecodeError:
            arguments = c.arguments  # what the worker sent, not guessed at
        out.append({"function": {"name": c.name, "arguments": arguments}})
    return out


def encode_answer(reply: Reply, *, kind: Kind, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now()}
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = _calls_json(reply.tool_calls)
        out["message"] = message
    else:
        out["response"] = reply.text
    out.update(done=True, done_reason=_done_reason(reply), **_counts(reply.usage))
    return out


class OllamaStream(StreamEncoder):
    """A translated answer as Ollama's NDJSON lines; the last says done, why, and the counts."""

    content_type = "application/x-ndjson"

    def __init__(self, *, kind: Kind, model: str) -> None:
        self._kind = kind
        self._model = model
        self._calls: dict[int, list[str]] = {}
        self._names: dict[int, str] = {}
        self._finish: Any = None
        self._usage: Usage | None = None

    def _line(self, text: str, **extra: Any) -> bytes:
        out: dict[str, Any] = {"model": self._model, "created_at": now()}
        if self._kind == "chat":
            out["message"] = {"role": "assistant", "content": text, **extra}
        else:
            out["response"] = text
        out["done"] = False
        return orjson.dumps(out) + b"\n"

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self._line(event.text)
        if isinstance(event, ToolCallDelta):  # Ollama gives each call whole: held to the end
            self._calls.setdefault(event.index, []).append(event.arguments)
            if event.name:
                self._names[event.index] = event.name
        elif isinstance(event, Finish):
            self._finish = event.reason
        elif isinstance(event, UsageReport):
            self._usage = event.usage
        return b""

    def end(self) -> bytes:
        out = b""
        calls = tuple(
            ToolCall("", self._names.get(i, ""), "".join(parts))
            for i, parts in sorted(self._calls.items())
        )
        if calls and self._kind == "chat":
            out = self._line("", tool_calls=_calls_json(calls))
        last = encode_answer(
            Reply("", (), self._finish, self._usage), kind=self._kind, model=self._model
        )
        if self._kind == "chat":
            last["message"] = {"role": "assistant", "content": ""}
        return out + orjson.dumps(self.noted(last)) + b"\n"

    def error(self, message: str) -> bytes:
        return orjson.dumps({"error": message}) + b"\n"
