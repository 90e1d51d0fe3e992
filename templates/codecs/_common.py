"""What the codecs share: reading a worker's JSON, framing events, the stream encoder's shape."""

import secrets
from typing import Any

import orjson

from templates.conversation import Event
from templates.errors import QUOTE_MAX_CHARS, ExtractError


class StreamEncoder:
    """Encodes a translated answer's events in a client's protocol, one event at a time."""

    content_type: str
    # What the gateway says about the stream in its last chunk, under "gateway" (a resumed
    # stream: {"resumed": 1}); set before `end`.
    note: dict[str, Any] | None = None

    def noted(self, doc: dict[str, Any]) -> dict[str, Any]:
        """`doc` (the stream's last document) with the gateway's note, when there is one."""
        return doc if self.note is None else {**doc, "gateway": self.note}

    def event(self, event: Event) -> bytes:
        """The bytes for one event (possibly none: some are held for the end)."""
        raise NotImplementedError

    def end(self) -> bytes:
        """The bytes that close the stream after the last event."""
        raise NotImplementedError

    def error(self, message: str) -> bytes:
        """The protocol's error event, for a worker that failed after the stream began."""
        raise NotImplementedError


def json_doc(raw: bytes) -> dict[str, Any]:
    """Parse a worker's answer as a JSON object, or raise ExtractError quoting it."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ExtractError(
            f"worker answered with something that is not JSON ({exc})",
            raw[:QUOTE_MAX_CHARS].decode("utf-8", errors="replace"),
        ) from exc
    if not isinstance(doc, dict):
        raise ExtractError(
            "worker answered with JSON that is not an object",
            raw[:QUOTE_MAX_CHARS].decode("utf-8", errors="replace"),
        )
    return doc


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def tool_call_id() -> str:
    return "call_" + secrets.token_hex(12)
