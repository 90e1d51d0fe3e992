"""Anthropic Messages: a client's request and answer, and an Anthropic-compatible worker's."""

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from templates.codecs._common import StreamEncoder, as_dict, count, json_doc
from templates.conversation import (
    Conversation,
    Event,
    Finish,
    FinishReason,
    Image,
    Message,
    Params,
    Part,
    Reply,
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

# What a worker is asked for when the client gave no max_tokens (Anthropic requires one).
DEFAULT_MAX_TOKENS = 4096

_STOP: dict[str, str] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


# A client's request.


def decode_request(body: Mapping[str, Any]) -> Conversation:
    """Read an Anthropic Messages request into the model."""
    messages: list[Message] = []
    system = body.get("system")
    if system:
        messages.append(Message("system", _blocks_text(system, "system")))
    for i, raw in enumerate(body.get("messages") or ()):
        messages.extend(_messages(raw, f"messages[{i}]"))
    stop = body.get("stop_sequences")
    choice = as_dict(body.get("tool_choice"))
    tool_choice = {"auto": "auto", "any": "required", "none": "none"}.get(str(choice.get("type")))
    if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        tool_choice = choice["name"]
    return Conversation(
        tuple(messages),
        Params(
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            top_k=body.get("top_k") if isinstance(body.get("top_k"), int) else None,
            max_tokens=body.get("max_tokens"),
            stop=tuple(s for s in stop or () if isinstance(s, str)),
        ),
        tools=tuple(_tool(t, i) for i, t in enumerate(body.get("tools") or ())),
        tool_choice=tool_choice,
    )


def _blocks_text(raw: Any, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise CannotTranslate(f"{where} must be a string or a list of text blocks")
    return "".join(str(b.get("text", "")) for b in raw if isinstance(b, dict))


def _messages(raw: Any, where: str) -> list[Message]:
    """One Anthropic message: its tool results become tool messages, ahead of its text."""
    role = raw.get("role") if isinstance(raw, dict) else None
    if role not in ("user", "assistant"):
        raise CannotTranslate(f"{where} needs a role of user or assistant")
    content = raw.get("content")
    if isinstance(content, str):
        return [Message(role, content)]
    if not isinstance(content, list):
        raise CannotTranslate(f"{where}.content must be a string or a list of blocks")
    out: list[Message] = []
    parts: list[Part] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        at = f"{where}.content[{j}]"
        if kind == "text":
            parts.append(Text(str(block.get("text", ""))))
        elif kind == "image":
            parts.append(_image(as_dict(block.get("source")), at))
        elif kind == "tool_use" and role == "assistant":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(ToolCall(str(block.get("id", "")), str(block.get("name", "")), arguments))
        elif kind == "tool_result" and role == "user":
            result = block.get("content")
            said = result if isinstance(result, str) else _blocks_text(result or [], at)
            out.append(Message("tool", said, tool_call_id=str(block.get("tool_use_id", ""))))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a model's reasoning, given back: not something other workers take
        else:
            raise CannotTranslate(f"{at} is a {kind!r} block, which this gateway does not carry")
    if parts or calls or not out:
        only_text = all(isinstance(p, Text) for p in parts)
        joined = "".join(p.text for p in parts if isinstance(p, Text))
        out.append(Message(role, joined if only_text else tuple(parts), tuple(calls)))
    return out


def _image(source: dict[str, Any], where: str) -> Image:
    if source.get("type") == "base64":
        return Image(
            f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        )
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return Image(source["url"])
    raise CannotTranslate(f"{where}.source must be a base64 or url image source")


def _tool(raw: Any, index: int) -> Tool:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise CannotTranslate(f"tools[{index}] needs a name")
    if raw.get("type") not in (None, "custom"):
        raise CannotTranslate(
            f"tools[{index}] is Anthropic's hosted {raw.get('type')!r} tool, which only "
            "Anthropic runs; declare your own tool with a name and input_schema"
        )
    schema = raw.get("input_schema")
    return Tool(raw["name"], raw.get("description"), schema if isinstance(schema, dict) else None)


# A worker's request.


def encode_request(conv: Conversation, model: str, stream: bool) -> dict[str, Any]:
    """The body an Anthropic-compatible worker's /v1/messages gets for `conv`."""
    p = conv.params
    if p.n != 1:
        raise CannotTranslate(f"n={p.n} asks for several answers; Anthropic workers give one")
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": p.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": _messages_json(conv.messages),
    }
    if conv.system is not None:
        body["system"] = conv.system
    for name in ("temperature", "top_p", "top_k"):
        if getattr(p, name) is not None:
            body[name] = getattr(p, name)
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    if conv.tools:
        body["tools"] = [
            {
                "name": t.name,
                "description": t.description or "",
                "input_schema": t.parameters or {"type": "object"},
            }
            for t in conv.tools
        ]
        if conv.tool_choice in ("auto", "none"):
            body["tool_choice"] = {"type": conv.tool_choice}
        elif conv.tool_choice == "required":
            body["tool_choice"] = {"type": "any"}
        elif conv.tool_choice:
            body["tool_choice"] = {"type": "tool", "name": conv.tool_choice}
    if stream:
        body["stream"] = True
    return body


def _messages_json(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue  # carried in "system"
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.text}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)  # results of one turn's calls go together
            else:
                out.append({"role": "user", "content": [block]})
            continue
        blocks: list[dict[str, Any]] = []
        parts = (Text(m.content),) if isinstance(m.content, str) else m.content
        for part in parts:
            if isinstance(part, Text):
                if part.text:
                    blocks.append({"type": "text", "text": part.text})
            else:
                inline = part.inline
                source = (
                    {"type": "base64", "media_type": inline[0], "data": inline[1]}
                    if inline
                    else {"type": "url", "url": part.url}
                )
                blocks.append({"type": "image", "source": source})
        for call in m.tool_calls:
            blocks.append(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}
            )
        out.append({"role": m.role, "content": blocks})
    return out


def _input(call: ToolCall) -> Any:
    try:
        return orjson.loads(call.arguments) if call.arguments else {}
    except orjson.JSONDecodeError:
        raise CannotTranslate(
            f"the arguments of tool call {call.id!r} are not JSON; Anthropic workers need an object"
        ) from None


# A worker's answer.


def usage_of(raw: Any) -> Usage | None:
    raw = as_dict(raw)
    prompt, completion = count(raw.get("input_tokens")), count(raw.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    cached = count(raw.get("cache_read_input_tokens"))
    return Usage(prompt or 0, completion or 0, cached)


def decode_answer(raw: bytes) -> Reply:
    doc = json_doc(raw)
    content = doc.get("content")
    if not isinstance(content, list):
        raise ExtractError("the worker's answer has no content list", raw.decode(errors="replace"))
    text = "".join(str(b.get("text", "")) for b in content if as_dict(b).get("type") == "text")
    calls = tuple(
        ToolCall(
            str(b.get("id", "")),
            str(b.get("name", "")),
            orjson.dumps(b.get("input") or {}).decode(),
        )
        for b in content
        if as_dict(b).get("type") == "tool_use"
    )
    return Reply(text, calls, finish_reason(doc.get("stop_reason")), usage_of(doc.get("usage")))


def _arguments(value: Any) -> str:
    return orjson.dumps(value or {}).decode()


def chunk_decoder() -> Callable[[dict[str, Any]], list[Event]]:
    """Read one event of an Anthropic stream; tool blocks are numbered in their order."""
    tools: dict[int, int] = {}  # content block index -> tool call index
    prompt: list[int | None] = [None]

    def decode(doc: dict[str, Any]) -> list[Event]:
        kind = doc.get("type")
        if kind == "message_start":
            usage = usage_of(as_dict(doc.get("message")).get("usage"))
            prompt[0] = usage.prompt_tokens if usage is not None else None
            return []
        if kind == "content_block_start":
            block = as_dict(doc.get("content_block"))
            if block.get("type") == "tool_use":
                index = tools.setdefault(int(doc.get("index", 0)), len(tools))
                return [ToolCallDelta(index, str(block.get("id", "")), str(block.get("name", "")))]
            return []
        if kind == "content_block_delta":
            delta = as_dict(doc.get("delta"))
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [TextDelta(str(delta["text"]))]
            if delta.get("type") == "input_json_delta":
                index = tools.get(int(doc.get("index", 0)), 0)
                return [ToolCallDelta(index, arguments=str(delta.get("partial_json", "")))]
            return []
        if kind == "message_delta":
            events: list[Event] = []
            reason = finish_reason(as_dict(doc.get("delta")).get("stop_reason"))
            if reason is not None:
                events.append(Finish(reason))
            usage = usage_of(doc.get("usage"))
            if usage is not None or prompt[0] is not None:
                completion = usage.completion_tokens if usage is not None else 0
                given = usage.prompt_tokens if usage is not None and usage.prompt_tokens else None
                events.append(UsageReport(Usage(given or prompt[0] or 0, completion)))
            return events
        return []

    return decode


# The client's answer.


def stop_reason(reply_finish: FinishReason | None, tool_calls: bool) -> str:
    if tool_calls and reply_finish in (None, "stop"):
        return "tool_use"
    return _STOP.get(reply_finish or "stop", "end_turn")


def _usage_json(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }
    if usage.cached_tokens is not None:
        out["cache_read_input_tokens"] = usage.cached_tokens
    return out


def _tool_input(call: ToolCall) -> Any:
    try:
        return orjson.loads(call.arguments) if call.arguments else {}
    except orjson.JSONDecodeError:
        return {}  # what could not be read is not guessed at


def encode_answer(reply: Reply, *, ident: str, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text or not reply.tool_calls:
        content.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call)}
        )
    out: dict[str, Any] = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(reply.finish, bool(reply.tool_calls)),
        "stop_sequence": None,
    }
    if reply.usage is not None:
        out["usage"] = _usage_json(reply.usage)
    return out


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStream(StreamEncoder):
    """A translated answer as Anthropic's event stream.

    message_start opens (its usage is a placeholder of zeros: the counts come at the end, in
    message_delta, where the SDKs read them); each text or tool-use block is opened, filled
    with deltas and closed; message_delta says why the answer stopped; message_stop ends it.
    """

    content_type = "text/event-stream"

    def __init__(self, *, ident: str, model: str) -> None:
        self._ident = ident
        self._model = model
        self._started = False
        self._block: int | None = None  # the open content block's index
        self._block_kind = ""
        self._tool_blocks: dict[int, int] = {}  # tool call index -> block index
        self._next_block = 0
        self._tools = False
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._ident,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message}) + _event(
            "ping", {"type": "ping"}
        )

    def _close_block(self) -> bytes:
        if self._block is None:
            return b""
        index, self._block = self._block, None
        return _event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._block, self._block_kind = self._next_block, kind
        self._next_block += 1
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return out + _event("content_block_start", start)

    def _delta(self, index: int | None, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": index, "delta": delta}
        return _event("content_block_delta", data)

    def event(self, event: Event) -> bytes:
        out = self._start()
        if isinstance(event, TextDelta):
            if self._block_kind != "text" or self._block is None:
                out += self._open("text", {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": event.text}
            return out + _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": self._block, "delta": delta},
            )
        if isinstance(event, ToolCallDelta):
            self._tools = True
            if event.index not in self._tool_blocks:
                block = {
                    "type": "tool_use",
                    "id": event.id or "toolu_" + secrets.token_hex(12),
                    "name": event.name or "",
                    "input": {},
                }
                out += self._open("tool", block)
                self._tool_blocks[event.index] = self._block if self._block is not None else 0
            if event.arguments:
                delta = {"type": "input_json_delta", "partial_json": event.arguments}
                index = self._tool_blocks[event.index]
                out += _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            return out
        if isinstance(event, Finish):
            self._finish = event.reason
        elif isinstance(event, UsageReport):
            self._usage = event.usage
        return out

    def end(self) -> bytes:
        out = self._start() + self._close_block()
        delta = {"stop_reason": stop_reason(self._finish, self._tools), "stop_sequence": None}
        usage = _usage_json(self._usage) if self._usage is not None else {"output_tokens": 0}
        last = {"type": "message_delta", "delta": delta, "usage": usage}
        out += _event("message_delta", self.noted(last))
        return out + _event("message_stop", {"type": "message_stop"})

    def error(self, message: str) -> bytes:
        return _event(
            "error", {"type": "error", "error": {"type": "api_error", "message": message}}
        )
