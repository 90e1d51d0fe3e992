"""Incremental decoders for streamed worker answers: server-sent events and NDJSON.

Each decoder is fed raw bytes as they arrive (chunks may split or join lines arbitrarily)
and returns the complete payloads seen so far: the `data` of each SSE event, or each
non-empty NDJSON line. Any chunking of a stream gives the same payloads.

A line is bounded: an unfinished line (the bytes since the last newline, `\\r` included) or
an SSE event's data longer than `max_line_bytes` raises StreamLineTooLong as soon as it
passes the limit. The pieces of an unfinished line are kept in a list and joined once when
its newline comes, so feeding costs time linear in the bytes fed, however the stream is cut.
"""

from typing import Literal, Protocol

from templates.errors import StreamLineTooLong

StreamFormat = Literal["sse", "ndjson"]

MAX_LINE_BYTES = 1024 * 1024  # the gateway passes its own setting (max_stream_line_bytes)


class Decoder(Protocol):
    def feed(self, chunk: bytes) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class _Lines:
    """Cut fed bytes into whole lines, holding the unfinished one in pieces."""

    __slots__ = ("_held", "_held_bytes", "max_line_bytes")

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._held: list[bytes] = []
        self._held_bytes = 0

    def lines(self, chunk: bytes) -> list[bytes]:
        """Return the lines `chunk` completes, without their `\\n`."""
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if not lines:  # no newline: only the unfinished line grew
            if rest:
                self._hold(rest)
            return lines
        if self._held:
            self._held.append(lines[0])
            lines[0] = b"".join(self._held)
            self._held = []
            self._held_bytes = 0
            if len(lines[0]) > self.max_line_bytes:
                raise self._too_long()
        if len(chunk) > self.max_line_bytes:  # only then can a line within it be too long
            for line in lines:
                if len(line) > self.max_line_bytes:
                    raise self._too_long()
        if rest:
            self._hold(rest)
        return lines

    def rest(self) -> bytes:
        """Return the unfinished line, and forget it."""
        rest = b"".join(self._held)
        self._held = []
        self._held_bytes = 0
        return rest

    def _hold(self, piece: bytes) -> None:
        self._held.append(piece)
        self._held_bytes += len(piece)
        if self._held_bytes > self.max_line_bytes:
            raise self._too_long()

    def _too_long(self) -> StreamLineTooLong:
        return StreamLineTooLong(
            f"a line of the worker's stream is longer than {self.max_line_bytes} bytes: the "
            "stream is not in the worker's stream_format, or the line limit is too low for it"
        )


class SSEDecoder:
    """Split an event stream into the data payload of each event."""

    __slots__ = ("_data", "_data_bytes", "_lines")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._lines = _Lines(max_line_bytes)
        self._data: list[bytes] = []
        self._data_bytes = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        for line in self._lines.lines(chunk):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                    self._data_bytes = 0
            elif line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                # The joined data: each line's bytes and the newlines between them.
                self._data_bytes += len(value) + (1 if self._data else 0)
                if self._data_bytes > self._lines.max_line_bytes:
                    raise StreamLineTooLong(
                        f"an event of the worker's stream carries more than "
                        f"{self._lines.max_line_bytes} bytes of data: the stream is broken, "
                        "or the line limit is too low for it"
                    )
                self._data.append(value)
            # comments (":") and other fields (event:, id:, retry:) carry no text
        return events

    def close(self) -> list[bytes]:
        rest = self._lines.rest()
        events = self.feed(rest + b"\n\n") if rest or self._data else []
        self._data = []
        self._data_bytes = 0
        return events


class NDJSONDecoder:
    """Split a newline-delimited JSON stream into its lines."""

    __slots__ = ("_lines",)

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._lines = _Lines(max_line_bytes)

    def feed(self, chunk: bytes) -> list[bytes]:
        return [line for line in (raw.strip() for raw in self._lines.lines(chunk)) if line]

    def close(self) -> list[bytes]:
        rest = self._lines.rest().strip()
        return [rest] if rest else []


def decoder(stream_format: StreamFormat, *, max_line_bytes: int = MAX_LINE_BYTES) -> Decoder:
    """Return a fresh decoder for `stream_format`; a longer line raises StreamLineTooLong."""
    if stream_format == "sse":
        return SSEDecoder(max_line_bytes)
    return NDJSONDecoder(max_line_bytes)
