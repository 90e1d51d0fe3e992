"""The conversation model every protocol maps to and from.

A client's request (an OpenAI chat, an Ollama generate, the seed's one prompt) is decoded into
a `Conversation`; a worker's request is encoded from it; a worker's answer is decoded into a
`Reply`, or a stream of `Event`s, which the client's codec encodes in its own protocol. Small
frozen values: built once per translated request, never for a passthrough one.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image given by URL: `https://...`, or inline as `data:<media type>;base64,<data>`."""

    url: str

    @property
    def inline(self) -> tuple[str, str] | None:
        """(media type, base64 data) of an inline image; None for one given by address."""
        if not self.url.startswith("data:") or ";base64," not in self.url:
            return None
        head, data = self.url[5:].split(";base64,", 1)
        return head or "application/octet-stream", data


Part = Text | Image


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made; `arguments` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str | tuple[Part, ...] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the tool's name, where known

    @property
    def text(self) -> str:
        """The message's text, its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, Text))

    @property
    def images(self) -> tuple[Image, ...]:
        if isinstance(self.content, str):
            return ()
        return tuple(part for part in self.content if isinstance(part, Image))


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema


@dataclass(frozen=True, slots=True)
class Params:
    """Sampling and output settings; None means the client did not say (the worker decides)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    # OpenAI's shape: {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    messages: tuple[Message, ...]
    params: Params = field(default_factory=Params)
    tools: tuple[Tool, ...] = ()
    # "auto", "none", "required", or the name of the one function to call
    tool_choice: str | None = None
    # A plain completion (OpenAI /v1/completions, Ollama /api/generate): the prompt as given.
    prompt: str | None = None
    include_usage: bool = False  # a streaming client asked for a usage chunk

    @property
    def system(self) -> str | None:
        """The system prompt: the system messages' text joined, or None when there are none."""
        texts = [m.text for m in self.messages if m.role == "system"]
        return "\n\n".join(texts) if texts else None

    @property
    def last_user_text(self) -> str:
        if self.prompt is not None:
            return self.prompt
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None  # prompt tokens the worker served from its cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer (its first choice)."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish: FinishReason | None = None  # None: the worker did not say
    usage: Usage | None = None  # None: the worker did not say (never invented)


# Stream events, in the order a worker's stream gives them.


@dataclass(frozen=True, slots=True)
class Start:
    """The assistant's turn begins."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call `index`: its id and name come first, its arguments in fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class UsageReport:
    usage: Usage


Event = Start | TextDelta | ToolCallDelta | Finish | UsageReport

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_length": "length",
    "model_length": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def finish_reason(value: Any) -> FinishReason | None:
    """Read a worker's finish reason in any protocol's words; None when it gave none."""
    if not isinstance(value, str) or not value:
        return None
    return _FINISH.get(value.lower(), "stop")


def reply_of(events: list[Event]) -> Reply:
    """Join a stream's events into the whole answer they make."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    finish: FinishReason | None = None
    usage: Usage | None = None
    for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            calls.setdefault(event.index, []).append(event.arguments)
            if event.id:
                ids[event.index] = event.id
            if event.name:
                names[event.index] = event.name
        elif isinstance(event, Finish):
            finish = event.reason
        elif isinstance(event, UsageReport):
            usage = event.usage
    tool_calls = tuple(
        ToolCall(ids.get(i, f"call_{i}"), names.get(i, ""), "".join(calls[i]))
        for i in sorted(calls)
    )
    return Reply("".join(text), tool_calls, finish, usage)
