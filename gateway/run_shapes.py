"""A run in the shapes of both sides: the conversation it sends, the records it writes back.

Pure functions: a run and its thread's messages into a `Conversation`; a whole answer into
the run's next state and the message it adds; the events of an Assistants stream.
"""

import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from gateway.errors import GatewayError
from registry import (
    LastError,
    MessageRecord,
    RegistryError,
    RunRecord,
    RunUsage,
    StoreUnavailable,
)
from templates.conversation import (
    Conversation,
    Image,
    Message,
    Params,
    Part,
    Reply,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    Usage,
)


def now() -> int:
    """Seconds since the epoch, as the Assistants objects carry times."""
    return int(time.time())


def conversation(run: RunRecord, messages: list[MessageRecord], *, stream: bool) -> Conversation:
    """The conversation a run sends: its instructions, the thread's messages, then the
    function calls the run made and the outputs given for them."""
    turns: list[Message] = []
    if run.instructions:
        turns.append(Message("system", run.instructions))
    strategy = run.truncation_strategy
    last = strategy.get("last_messages")
    history = [m for m in messages if m.run_id != run.id or not run.tool_rounds]
    if strategy.get("type") == "last_messages" and isinstance(last, int) and last > 0:
        history = history[-last:]
    for message in history:
        parts: list[Part] = []
        for part in message.content:
            if part.get("type") == "text":
                parts.append(Text(str(part["text"]["value"])))
            elif part.get("type") == "image_url":
                parts.append(Image(str(part["image_url"]["url"])))
        only_text = all(isinstance(p, Text) for p in parts)
        content = message.text if only_text else tuple(parts)
        turns.append(Message(message.role, content))
    for round_ in run.tool_rounds:
        calls = tuple(
            ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in round_["calls"]
        )
        turns.append(Message("assistant", round_.get("text", ""), tool_calls=calls))
        names = {c.id: c.name for c in calls}
        for out in round_["outputs"]:
            call_id = out["tool_call_id"]
            turns.append(Message("tool", out["output"], tool_call_id=call_id, name=names[call_id]))
    fmt = run.response_format
    params = Params(
        temperature=run.temperature,
        top_p=run.top_p,
        max_tokens=run.max_completion_tokens,
        response_format=fmt if isinstance(fmt, dict) and fmt.get("type") != "text" else None,
    )
    tools = tuple(
        Tool(f["name"], f.get("description"), f.get("parameters"))
        for f in (t["function"] for t in run.tools if t.get("type") == "function")
    )
    choice = run.tool_choice
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name")
    return Conversation(
        tuple(turns),
        params,
        tools,
        choice if isinstance(choice, str) and tools else None,
        include_usage=stream,
    )


def answer_message(run: RunRecord, message_id: str) -> MessageRecord:
    """The assistant's message a run writes, before any of its text has come."""
    return MessageRecord(
        id=message_id,
        created_at=now(),
        thread_id=run.thread_id,
        role="assistant",
        content=[],
        status="in_progress",
        assistant_id=run.assistant_id,
        run_id=run.id,
    )


def outcome(
    run: RunRecord, message: MessageRecord, reply: Reply, *, deadline_s: float
) -> tuple[RunRecord, MessageRecord | None]:
    """The run and the message it adds (None: no text) once a whole answer is in: it calls
    functions (requires_action, until their outputs come within `deadline_s`), or it is
    completed, or incomplete (cut at max_completion_tokens)."""
    at = now()
    usage = _usage(run.usage, reply.usage)
    content = text_content(reply.text)
    if reply.tool_calls and run.tools:
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ]
        waiting = run.model_copy(
            update={
                "status": "requires_action",
                "required_action": {
                    "type": "submit_tool_outputs",
                    "submit_tool_outputs": {"tool_calls": calls},
                },
                "tool_rounds": [
                    *run.tool_rounds,
                    {"text": reply.text, "calls": calls, "outputs": []},
                ],
                "expires_at": at + int(deadline_s),
                "usage": usage,
            }
        )
        said = None
        if reply.text:
            said = message.model_copy(
                update={"content": content, "status": "completed", "completed_at": at}
            )
        return waiting, said
    if reply.finish == "length":
        return (
            run.model_copy(
                update={
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_completion_tokens"},
                    "usage": usage,
                }
            ),
            message.model_copy(
                update={
                    "content": content,
                    "status": "incomplete",
                    "incomplete_at": at,
                    "incomplete_details": {"reason": "max_tokens"},
                }
            ),
        )
    return (
        run.model_copy(update={"status": "completed", "completed_at": at, "usage": usage}),
        message.model_copy(update={"content": content, "status": "completed", "completed_at": at}),
    )


def failed(run: RunRecord, error: Exception) -> RunRecord:
    """The run ended by `error` (the gateway's, the worker's, or a stored limit's)."""
    status = error.status if isinstance(error, GatewayError) else 500
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    if status == 429:
        code = "rate_limit_exceeded"
    elif 400 <= status < 500 or (
        isinstance(error, RegistryError) and not isinstance(error, StoreUnavailable)
    ):
        code = "invalid_prompt"
    else:
        code = "server_error"
    return run.model_copy(
        update={
            "status": "failed",
            "failed_at": now(),
            "last_error": LastError(code=code, message=str(error)),
        }
    )


def _usage(before: RunUsage | None, usage: Usage | None) -> RunUsage | None:
    """The run's usage with one more answer's (each of its turns counts)."""
    if usage is None:
        return before
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if before is not None:
        prompt, completion = prompt + before.prompt_tokens, completion + before.completion_tokens
    return RunUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def event(name: str, data: Any) -> bytes:
    """One server-sent event of an Assistants stream."""
    if isinstance(data, RunRecord):
        data = data.public()
    elif isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


DONE = b"event: done\ndata: [DONE]\n\n"


def text_content(value: str) -> list[dict[str, Any]]:
    """A message's content of one text part."""
    return [{"type": "text", "text": {"value": value, "annotations": []}}]


def cut(message: MessageRecord, text: str, reason: str = "run_failed") -> MessageRecord:
    """The message with the text that came before its run ended early."""
    return message.model_copy(
        update={
            "content": text_content(text),
            "status": "incomplete",
            "incomplete_at": now(),
            "incomplete_details": {"reason": reason},
        }
    )


def delta(message: MessageRecord, piece: TextDelta) -> dict[str, Any]:
    """A `thread.message.delta` event's data for one piece of text."""
    part = {"index": 0, "type": "text", "text": {"value": piece.text, "annotations": []}}
    return {"id": message.id, "object": "thread.message.delta", "delta": {"content": [part]}}
