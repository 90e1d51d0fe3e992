"""The seed's template workers: placeholders filled from the model, answers read by paths.

A template worker says where its answer's text is (`response_extract`, and `stream_extract`
for each chunk of a stream) and may say where its token counts and finish reason are
(`usage_extract`, `finish_reason_extract`). What it does not say, the answer does not carry:
no usage is invented here.
"""

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import orjson

import templates.placeholders as placeholders
from templates.codecs.openai_chat import messages_json
from templates.conversation import (
    Conversation,
    Event,
    Finish,
    Reply,
    TextDelta,
    Usage,
    UsageReport,
    finish_reason,
)
from templates.errors import QUOTE_MAX_CHARS, ExtractError
from templates.extract import Extractor

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens")


def values(conv: Conversation, names: AbstractSet[str] | None = None) -> dict[str, Any]:
    """The placeholder values of a conversation: its last user text is {USER_PROMPT}.

    `names` are the placeholders the worker's template uses (`RequestPlan.names`): the
    messages and the system prompt, which cost a list of dicts and a join per request, are
    only made when it uses them (a seed template has only {USER_PROMPT}). None: all of them.
    """
    p = conv.params
    found: dict[str, Any] = {
        placeholders.USER_PROMPT: conv.last_user_text,
        placeholders.MODEL_TEMPERATURE: p.temperature,
        placeholders.TOP_P: p.top_p,
        placeholders.MAX_TOKENS: p.max_tokens,
    }
    if names is None or placeholders.SYSTEM_PROMPT in names:
        found[placeholders.SYSTEM_PROMPT] = conv.system
    if names is None or placeholders.MESSAGES in names:
        found[placeholders.MESSAGES] = messages_json(conv.messages)
    return found


@dataclass(frozen=True, slots=True)
class TemplateAnswers:
    """How a template worker's answers are read."""

    text: Extractor
    chunk_text: Extractor | None = None
    usage: Mapping[str, Extractor] | None = None  # USAGE_FIELDS -> where the count is
    finish: Extractor | None = None

    # Whether reading an answer may cost work that grows with it (JSONPath wildcards): fixed at
    # compile time, read on every answer.
    costly: bool = field(init=False)

    def __post_init__(self) -> None:
        paths = [self.text, self.finish, *(self.usage or {}).values()]
        object.__setattr__(self, "costly", any(p is not None and p.costly for p in paths))

    def answer(self, raw: bytes) -> Reply:
        if self.text.is_raw and not self.usage and self.finish is None:
            return Reply(self.text.extract(raw))
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if self.text.is_raw:
                return Reply(raw.decode("utf-8", errors="replace"))
            raise ExtractError(
                f"worker answered with something that is not JSON ({exc})",
                raw[:QUOTE_MAX_CHARS].decode("utf-8", errors="replace"),
            ) from exc
        text = (
            raw.decode("utf-8", errors="replace")
            if self.text.is_raw
            else self.text.extract_value(doc)
        )
        return Reply(text, (), self._finish(doc), self._usage(doc))

    def chunk(self, doc: Any) -> list[Event]:
        events: list[Event] = []
        text = self.chunk_text.text_or_none(doc) if self.chunk_text is not None else None
        if text:
            events.append(TextDelta(text))
        reason = self._finish(doc)
        if reason is not None:
            events.append(Finish(reason))
        usage = self._usage(doc)
        if usage is not None:
            events.append(UsageReport(usage))
        return events

    def _finish(self, doc: Any) -> Any:
        if self.finish is None:
            return None
        value = self.finish.text_or_none(doc)
        return finish_reason(value)

    def _usage(self, doc: Any) -> Usage | None:
        if not self.usage:
            return None
        counts: dict[str, int] = {}
        for name, path in self.usage.items():
            value = path.text_or_none(doc)
            if value is not None and value.isdigit():
                counts[name] = int(value)
        if "prompt_tokens" not in counts and "completion_tokens" not in counts:
            return None
        return Usage(
            counts.get("prompt_tokens", 0),
            counts.get("completion_tokens", 0),
            counts.get("cached_tokens"),
        )
