"""OpenAI Responses: a client's request (input items) and answer (output items, typed events).

The gateway keeps the state (stored responses, `previous_response_id`) itself, so this codec
only maps one turn: the conversation so far (earlier turns' messages, given by the caller)
plus this request's input, to the model, and a `Reply` back to a response object.
"""

import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from templates.codecs._common import StreamEncoder, as_dict
from templates.codecs.openai_chat import messages_json
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
    Role,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from templates.errors import CannotTranslate

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def response_id() -> str:
    return "resp_" + secrets.token_hex(16)


def input_messages(raw: Any) -> tuple[Message, ...]:
    """This request's `input` (a string or a list of items) as messages."""
    if isinstance(raw, str):
        return (Message("user", raw),)
    if not isinstance(raw, list):
        raise CannotTranslate("input must be a string or a list of items")
    out: list[Message] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        item = as_dict(item)
        kind = item.get("type", "message")
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise CannotTranslate(
                    f"{where} needs a role of user, assistant, system or developer"
                )
            out.append(Message(role, _content(item.get("content"), where)))
        elif kind == "function_call":
            call = ToolCall(
                str(item.get("call_id", "")),
                str(item.get("name", "")),
                str(item.get("arguments", "")),
            )
            if out and out[-1].role == "assistant" and not out[-1].text:
                out[-1] = Message("assistant", "", (*out[-1].tool_calls, call))
            else:
                out.append(Message("assistant", "", (call,)))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            out.append(Message("tool", text, tool_call_id=str(item.get("call_id", ""))))
        elif kind == "reasoning":
            continue
        else:
            raise CannotTranslate(f"{where} is a {kind!r} item, which this gateway does not carry")
    return tuple(out)


def _content(raw: Any, where: str) -> str | tuple[Part, ...]:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise CannotTranslate(f"{where}.content must be a string or a list of parts")
    parts: list[Part] = []
    for j, part in enumerate(raw):
        part = as_dict(part)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append(Text(str(part.get("text", ""))))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(Image(part["image_url"]))
        else:
            raise CannotTranslate(f"{where}.content[{j}] is a {kind!r} part, not carried here")
    if all(isinstance(p, Text) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, Text))
    return tuple(parts)


def decode_request(body: Mapping[str, Any], history: tuple[Message, ...]) -> Conversation:
    """The conversation of a Responses request: `history` (the earlier turns), then its input."""
    messages: list[Message] = []
    if body.get("instructions"):
        messages.append(Message("system", str(body["instructions"])))
    messages.extend(m for m in history if m.role != "system")
    messages.extend(input_messages(body.get("input")))
    tools = []
    for i, tool in enumerate(body.get("tools") or ()):
        tool = as_dict(tool)
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise CannotTranslate(
                f"tools[{i}] is a {tool.get('type')!r} tool; only function tools are carried "
                "(hosted tools such as web_search and file_search run only at OpenAI)"
            )
        params = tool.get("parameters")
        tools.append(
            Tool(
                tool["name"], tool.get("description"), params if isinstance(params, dict) else None
            )
        )
    choice = body.get("tool_choice")
    fmt = as_dict(as_dict(body.get("text")).get("format"))
    response_format: dict[str, Any] | None = None
    if fmt.get("type") == "json_object":
        response_format = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        response_format = {"type": "json_schema", "json_schema": schema}
    return Conversation(
        tuple(messages),
        Params(
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            max_tokens=body.get("max_output_tokens"),
            response_format=response_format,
        ),
        tools=tuple(tools),
        tool_choice=choice if isinstance(choice, str) else as_dict(choice).get("name"),
    )


def output_messages(reply: Reply) -> tuple[Message, ...]:
    """The answer as the messages it adds to the conversation (kept for the next turn)."""
    return (Message("assistant", reply.text, reply.tool_calls),)


def _output(reply: Reply, ident: str, done: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if reply.text or not reply.tool_calls:
        out.append(_message_item(ident, reply.text, "completed" if done else "in_progress"))
    for call in reply.tool_calls:
        out.append(_call_item(call))
    return out


def _message_item(ident: str, text: str, status: str) -> dict[str, Any]:
    content = (
        [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    )
    return {
        "type": "message",
        "id": "msg_" + ident[5:],
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_" + call.id.removeprefix("call_"),
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens or 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def encode_answer(
    reply: Reply | None,
    *,
    ident: str,
    model: str,
    body: Mapping[str, Any],
    created_at: int | None = None,
    status: str = "completed",
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A response object; `reply` None while in progress or failed."""
    incomplete = reply is not None and reply.finish == "length"
    if reply is not None and status == "completed" and incomplete:
        status = "incomplete"
    return {
        "id": ident,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": _output(reply, ident) if reply is not None else [],
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": body.get("previous_response_id"),
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": _usage(reply.usage) if reply is not None else None,
        "metadata": body.get("metadata") or {},
    }


def input_items(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """A request's input as `GET /v1/responses/{id}/input_items` lists it."""
    out = []
    for i, m in enumerate(messages_json(messages)):
        role = m["role"]
        if role == "tool":
            out.append(
                {
                    "type": "function_call_output",
                    "id": f"fco_{i}",
                    "call_id": m["tool_call_id"],
                    "output": m["content"],
                }
            )
            continue
        content = m.get("content") or ""
        text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
        kind = "output_text" if role == "assistant" else "input_text"
        out.append(
            {
                "type": "message",
                "id": f"msg_{i}",
                "role": role,
                "status": "completed",
                "content": [{"type": kind, "text": text}],
            }
        )
    return out


class ResponsesStream(StreamEncoder):
    """A translated answer as the Responses API's typed events, numbered in sequence.

    `response.completed` carries the whole response, as the SDK's stream helper reads it;
    the caller gets the reply it made (`reply`) to store it.
    """

    content_type = "text/event-stream"

    def __init__(self, *, ident: str, model: str, body: Mapping[str, Any]) -> None:
        self._ident = ident
        self._model = model
        self._body = body
        self._created = int(time.time())
        self._seq = 0
        self._started = False
        self._text: list[str] = []
        self._text_open = False
        self._calls: dict[int, list[str]] = {}
        self._call_meta: dict[int, tuple[str, str]] = {}
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self.reply: Reply | None = None

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(
        self, status: str, reply: Reply | None = None, error: Any = None
    ) -> dict[str, Any]:
        return encode_answer(
            reply,
            ident=self._ident,
            model=self._model,
            body=self._body,
            created_at=self._created,
            status=status,
            error=error,
        )

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._event(
            "response.created", {"response": self._response("in_progress")}
        ) + self._event("response.in_progress", {"response": self._response("in_progress")})

    def _open_text(self) -> bytes:
        if self._text_open:
            return b""
        self._text_open = True
        item = _message_item(self._ident, "", "in_progress")
        part = {"type": "output_text", "text": "", "annotations": []}
        return self._event(
            "response.output_item.added", {"output_index": 0, "item": item}
        ) + self._event(
            "response.content_part.added",
            {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": part},
        )

    def event(self, event: Event) -> bytes:
        out = self._start()
        if isinstance(event, TextDelta):
            out += self._open_text()
            self._text.append(event.text)
            return out + self._event(
                "response.output_text.delta",
                {
                    "item_id": "msg_" + self._ident[5:],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": event.text,
                    "logprobs": [],
                },
            )
        if isinstance(event, ToolCallDelta):
            self._calls.setdefault(event.index, []).append(event.arguments)
            if event.id or event.name:
                self._call_meta[event.index] = (event.id or f"call_{event.index}", event.name or "")
        elif isinstance(event, Finish):
            self._finish = event.reason
        elif isinstance(event, UsageReport):
            self._usage = event.usage
        return out

    def end(self) -> bytes:
        out = self._start()
        text = "".join(self._text)
        calls = tuple(
            ToolCall(*self._call_meta.get(i, (f"call_{i}", "")), "".join(parts))
            for i, parts in sorted(self._calls.items())
        )
        reply = Reply(text, calls, self._finish, self._usage)
        self.reply = reply
        if self._text_open or not calls:
            out += self._open_text()
            item_id = "msg_" + self._ident[5:]
            part = {"type": "output_text", "text": text, "annotations": []}
            out += self._event(
                "response.output_text.done",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
            )
            out += self._event(
                "response.content_part.done",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part},
            )
            item = _message_item(self._ident, text, "completed")
            out += self._event("response.output_item.done", {"output_index": 0, "item": item})
        base = 1 if (self._text_open or not calls) else 0
        for n, call in enumerate(calls):
            item = _call_item(call)
            added = {**item, "arguments": "", "status": "in_progress"}
            index = base + n
            out += self._event("response.output_item.added", {"output_index": index, "item": added})
            out += self._event(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": index, "delta": call.arguments},
            )
            out += self._event(
                "response.function_call_arguments.done",
                {"item_id": item["id"], "output_index": index, "arguments": call.arguments},
            )
            out += self._event("response.output_item.done", {"output_index": index, "item": item})
        done = self._response("completed", reply)
        kind = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, self.noted({"response": done}))

    def error(self, message: str) -> bytes:
        error = {"code": "server_error", "message": message}
        return self._start() + self._event(
            "response.failed", {"response": self._response("failed", error=error)}
        )
