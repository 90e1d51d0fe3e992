"""Usage read from a worker's own bytes (passthrough answers), and estimates where it has none.

A passthrough answer is never decoded whole for its usage. In a whole answer the usage sits
in one small object (OpenAI's `usage`, Anthropic's) or in a few counts at the end (Ollama's
`prompt_eval_count` / `eval_count`): found from the end with a byte search and only that part
parsed. A stream passes through `UsageTap`, which looks at each whole line with one byte
search for the marker of a usage line and parses only the lines that have it; when the
gateway asked an OpenAI worker for usage the client did not ask for
(`stream_options.include_usage`, see gateway/calls.py), the tap also drops that extra chunk
(the one with `"choices": []` and the usage) from what the client gets.

Estimates, for workers that report nothing: about 4 bytes of UTF-8 text per token (OpenAI's
rule of thumb for English; it gives about 0.75 of a token per CJK character, which is close),
plus 4 tokens per chat message for its role and framing; for a passthrough stream whose text
is never decoded, one token per streamed event. Estimated counts are marked as such wherever
they are recorded.
"""

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from gateway.http1 import Sink
from templates.codecs import EmbeddingRequest
from templates.conversation import Conversation, Reply, Usage

_MAX_PENDING_BYTES = 1024 * 1024  # a longer unfinished line is passed on unread
_TAIL_BYTES = 4096  # Ollama's counts come last, after the (possibly long) context array
_OLLAMA_COUNT = re.compile(rb'"(prompt_eval_count|eval_count)"\s*:\s*(\d+)')
# A usage object of counts only, no details (cached tokens, reasoning): {"prompt_tokens":N,
# "completion_tokens":M,"total_tokens":T}
_OPENAI_PLAIN = re.compile(
    rb'"usage"\s*:\s*\{\s*"prompt_tokens"\s*:\s*(\d+)\s*,\s*"completion_tokens"\s*:\s*(\d+)'
    rb'\s*,\s*"total_tokens"\s*:\s*\d+\s*\}'
)
# The same without spaces, as most servers write it: the prefix is compared as bytes and only
# the counts go through the regex (each `\s*` above is a loop of its own in `re`).
_COMPACT_PREFIX = b'"usage":{"prompt_tokens":'
_COMPACT_COUNTS = re.compile(rb'(\d+),"completion_tokens":(\d+),"total_tokens":\d+\}')
BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


# Whole answers.


# (prompt, completion, cached) tokens: what accounting needs of a Usage, without making one
# (a frozen dataclass costs about 2k instructions per field to build).
Counts = tuple[int, int, int | None]


def counts_of_answer(raw: bytes, protocol: str) -> Counts | None:
    """`usage_of_answer` as counts: what every passed-through answer's accounting reads."""
    if protocol == "openai":
        plain = _openai_plain(raw)
        if plain is not None:
            return int(plain[1]), int(plain[2]), None
    usage = usage_of_answer(raw, protocol)
    if usage is None:
        return None
    return usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens


def usage_of_answer(raw: bytes, protocol: str) -> Usage | None:
    """The usage in a worker's own whole answer (OpenAI, Ollama or Anthropic), or None."""
    if protocol == "ollama":
        return _ollama_counts(raw)
    if protocol == "openai":
        plain = _openai_plain(raw)
        if plain is not None:
            return Usage(int(plain[1]), int(plain[2]))
    found = _object_after(raw, b'"usage"')
    if found is None:
        return None
    return _anthropic_usage(found) if protocol == "anthropic" else _openai_usage(found)


def _openai_plain(raw: bytes) -> re.Match[bytes] | None:
    """What OpenAI-compatible servers send, in this order: read without parsing anything."""
    at = raw.rfind(b'"usage"')
    if at < 0:
        return None
    if raw.startswith(_COMPACT_PREFIX, at):
        return _COMPACT_COUNTS.match(raw, at + len(_COMPACT_PREFIX))
    return _OPENAI_PLAIN.match(raw, at)


def _object_after(raw: bytes, name: bytes) -> dict[str, Any] | None:
    """Parse the last JSON object that is the value of member `name` in `raw`."""
    at = raw.rfind(name)
    if at < 0:
        return None
    start = raw.find(b"{", at + len(name))
    if start < 0 or raw[at + len(name) : start].strip(b" \t\r\n:"):
        return None
    # Usage objects hold numbers and objects of numbers: braces in strings cannot occur.
    i = raw.find(b"}", start) + 1
    while i and raw.count(b"{", start, i) != raw.count(b"}", start, i):
        i = raw.find(b"}", i) + 1
    if not i:
        return None
    try:
        doc = orjson.loads(raw[start:i])
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _ollama_counts(raw: bytes) -> Usage | None:
    found = dict(_OLLAMA_COUNT.findall(raw[-_TAIL_BYTES:]))
    if not found and len(raw) > _TAIL_BYTES:
        found = dict(_OLLAMA_COUNT.findall(raw))
    if not found:
        return None
    return Usage(int(found.get(b"prompt_eval_count", 0)), int(found.get(b"eval_count", 0)))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _openai_usage(doc: Mapping[str, Any]) -> Usage | None:
    prompt, completion = _count(doc.get("prompt_tokens")), _count(doc.get("completion_tokens"))
    if prompt is None:
        return None
    details = doc.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(prompt, completion or 0, cached)


def _anthropic_usage(doc: Mapping[str, Any]) -> Usage | None:
    prompt, completion = _count(doc.get("input_tokens")), _count(doc.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    read = _count(doc.get("cache_read_input_tokens"))
    written = _count(doc.get("cache_creation_input_tokens")) or 0
    # Anthropic counts cached input apart from input_tokens; ours are part of the prompt.
    return Usage((prompt or 0) + (read or 0) + written, completion or 0, read)


# Streams.

_Reader = Callable[[dict[str, Any], "UsageTap"], None]


def _read_openai(doc: dict[str, Any], tap: "UsageTap") -> None:
    usage = doc.get("usage")
    if isinstance(usage, dict):
        found = _openai_usage(usage)
        if found is not None:
            tap.usage = found


def _read_ollama(doc: dict[str, Any], tap: "UsageTap") -> None:
    if doc.get("done"):
        prompt, completion = _count(doc.get("prompt_eval_count")), _count(doc.get("eval_count"))
        if prompt is not None or completion is not None:
            tap.usage = Usage(prompt or 0, completion or 0)


def _read_anthropic(doc: dict[str, Any], tap: "UsageTap") -> None:
    # message_start carries the input (and a first output count); each message_delta the
    # output so far.
    message = doc.get("message")
    usage = message.get("usage") if isinstance(message, dict) else doc.get("usage")
    if not isinstance(usage, dict):
        return
    found = _anthropic_usage(usage)
    if found is None:
        return
    before = tap.usage
    if before is not None and usage.get("input_tokens") is None:
        found = Usage(before.prompt_tokens, found.completion_tokens, before.cached_tokens)
    tap.usage = found


# protocol -> (the bytes a usage line has, its reader, SSE (else NDJSON), the events of a
# stream that carry no text: OpenAI's role chunk, finish chunk and [DONE]; Ollama's done line;
# Anthropic's message_start, content_block_start, ping, content_block_stop, message_delta
# and message_stop)
_READERS: dict[str, tuple[tuple[bytes, ...], _Reader, bool, int]] = {
    "openai": ((b'"usage":{', b'"usage": {'), _read_openai, True, 3),
    "ollama": ((b'eval_count"',), _read_ollama, False, 1),
    "anthropic": ((b'"usage"',), _read_anthropic, True, 6),
}


class UsageTap:
    """A Sink that reads the usage out of a worker's own stream as it passes to `sink`.

    `strip`: drop the usage-only chunk (OpenAI, `"choices": []`) the client did not ask for.
    After the stream, `usage` is what the worker reported (None: nothing) and `events` how
    many events (SSE) or lines (NDJSON) passed, for an estimate.
    """

    __slots__ = (
        "_framing",
        "_markers",
        "_pending",
        "_read",
        "_sink",
        "_sse",
        "_strip",
        "events",
        "usage",
    )

    def __init__(self, sink: Sink, protocol: str, *, strip: bool = False) -> None:
        self._sink = sink
        self._markers, self._read, self._sse, self._framing = _READERS.get(
            protocol, _READERS["openai"]
        )
        self._strip = strip
        self._pending = b""  # the start of a line whose end has not arrived yet
        self.usage: Usage | None = None
        self.events = 0

    def write(self, data: bytes) -> None:
        if self._pending:
            data, self._pending = self._pending + data, b""
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            if len(data) - cut <= _MAX_PENDING_BYTES:
                data, self._pending = data[:cut], data[cut:]
        if not data:
            return
        self.events += data.count(b"\n\n") if self._sse else data.count(b"\n")
        if any(marker in data for marker in self._markers):
            data = self._look(data)
        if data:
            self._sink.write(data)

    def backlog(self) -> int:
        return self._sink.backlog()

    def estimate(self) -> int:
        """Completion tokens, estimated as one per event that carries text."""
        return max(self.events - self._framing, 0)

    def flush(self) -> None:
        """Pass on what is left of a last line that never ended."""
        data, self._pending = self._pending, b""
        if data:
            self.events += 1
            if any(marker in data for marker in self._markers):
                data = self._look(data)
            if data:
                self._sink.write(data)

    def _look(self, data: bytes) -> bytes:
        lines = data.split(b"\n")
        kept: list[bytes] = []
        skip_blank = False
        for line in lines:
            if skip_blank:
                skip_blank = False
                if not line.strip():
                    continue
            if any(marker in line for marker in self._markers) and self._usage_line(line):
                skip_blank = True  # the event's blank line goes with it
                continue
            kept.append(line)
        return b"\n".join(kept)

    def _usage_line(self, line: bytes) -> bool:
        """Read a line with a usage marker; return True when it is to be dropped."""
        payload = line[5:] if self._sse and line.startswith(b"data:") else line
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(doc, dict):
            return False
        self._read(doc, self)
        return self._strip and doc.get("choices") == [] and "usage" in doc


# Estimates.


def text_tokens(text: str) -> int:
    """Estimate the tokens of `text` (about 4 bytes of UTF-8 per token)."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
    return -(-size // BYTES_PER_TOKEN)  # rounded up, in ints


def reply_text(reply: Reply) -> str:
    """The text a whole answer's completion is estimated from: its text and its tool calls'
    arguments."""
    if not reply.tool_calls:  # the usual answer: no generator made for it
        return reply.text
    return reply.text + "".join(call.arguments for call in reply.tool_calls)


def prompt_tokens(body: Mapping[str, Any] | None, decoded: Callable[[], Any]) -> int:
    """Estimate the prompt tokens of a request: the client's own body where there is one,
    else its decoded form (a Conversation or an EmbeddingRequest)."""
    if body is not None:
        return _body_tokens(body)
    request = decoded()
    if isinstance(request, Conversation):
        if request.prompt is not None:
            return text_tokens(request.prompt)
        tokens = 0
        for message in request.messages:  # a loop: no generator made per answer
            tokens += TOKENS_PER_MESSAGE + text_tokens(message.text)
        return tokens
    if isinstance(request, EmbeddingRequest):
        return sum(text_tokens(text) for text in request.inputs)
    return 0


def _body_tokens(body: Mapping[str, Any]) -> int:
    tokens = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                tokens += TOKENS_PER_MESSAGE + sum(
                    text_tokens(t) for t in _texts(message.get("content"))
                )
    for name in ("prompt", "input", "system"):
        tokens += sum(text_tokens(t) for t in _texts(body.get(name)))
    return tokens


def _texts(value: Any) -> Iterable[str]:
    """The texts in a content value: a string, a list of strings, or of parts with text."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                yield item["text"]
