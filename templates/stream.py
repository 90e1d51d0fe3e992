"""Incremental decoders for streamed worker answers: server-sent events and NDJSON.

Each decoder is fed raw bytes as they arrive (chunks may split or join lines arbitrarily)
and returns the complete payloads seen so far: the `data` of each SSE event, or each
non-empty NDJSON line.
"""

from typing import Literal, Protocol

StreamFormat = Literal["sse", "ndjson"]


class Decoder(Protocol):
    def feed(self, chunk: bytes) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class SSEDecoder:
    """Split an event stream into the data payload of each event."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":") and other fields (event:, id:, retry:) carry no text
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[bytes]:
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return events


class NDJSONDecoder:
    """Split a newline-delimited JSON stream into its lines."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        *lines, self._buffer = buffer.split(b"\n")
        return [line for line in (raw.strip() for raw in lines) if line]

    def close(self) -> list[bytes]:
        rest, self._buffer = self._buffer.strip(), b""
        return [rest] if rest else []


def decoder(stream_format: StreamFormat) -> Decoder:
    """Return a fresh decoder for `stream_format`."""
    return SSEDecoder() if stream_format == "sse" else NDJSONDecoder()
