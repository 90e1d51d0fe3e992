"""A streaming OpenAI-compatible upstream: N SSE chunks per request, a fixed delay apart.

Every POST gets `text/event-stream` in HTTP/1.1 chunked encoding, on a keep-alive connection:
the first chunk at once, then one every `interval_ms`, then `data: [DONE]`. Each chunk carries
`"t":<CLOCK_MONOTONIC ns>` taken just before it is written. CLOCK_MONOTONIC is one clock for
every process of the machine, so a client subtracts it from its own arrival time to get the
chunk's delay. A POST without `"stream": true` gets one fixed `chat.completion`, any other
request a small JSON 200 (health probes). A raw asyncio protocol with one loop timer per open
stream keeps it much cheaper per chunk than the gateway. Run it alone with
`python -m bench.streams.sse_upstream --port P --chunks 20 --interval-ms 50`.
"""

import argparse
import asyncio
import time
from typing import cast

from bench import loop
from bench.upstream import request_body_length

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_DONE = b"data: [DONE]\n\n"
_NOT_A_STREAM = b'{"object":"list","data":[]}'
_OTHER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_NOT_A_STREAM),
    _NOT_A_STREAM,
)
_WHOLE = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"s","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)
_WHOLE_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_WHOLE), _WHOLE)
)
_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 1024 * 1024


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(index: int) -> bytes:
    # Field order matters to the client: it finds the stamp with a plain byte search.
    return (
        b'data: {"t":%d,"i":%d,"object":"chat.completion.chunk","model":"s",'
        b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
        % (time.monotonic_ns(), index)
    )


class _StreamingAnswer(asyncio.Protocol):
    """Answer each POST with a timed SSE stream; requests queue behind the current stream."""

    def __init__(self, chunks: int, interval_s: float) -> None:
        self._chunks = chunks
        self._interval_s = interval_s
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._sent = 0
        self._streaming = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._streaming:
            self._next_request()

    def _next_request(self) -> None:
        transport = self._transport
        if transport is None:
            return
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                transport.close()
            return
        head = bytes(self._buffer[:head_end]).lower()
        length = request_body_length(head)
        if length < 0 or length > _MAX_BODY_BYTES:
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            transport.close()
            return
        end = head_end + 4 + length
        if len(self._buffer) < end:
            return
        streamed = b'"stream":true' in self._buffer[head_end:end].replace(b" ", b"")
        del self._buffer[:end]
        if not head.startswith(b"post ") or not streamed:
            transport.write(_WHOLE_ANSWER if head.startswith(b"post ") else _OTHER)
            self._next_request()
            return
        self._streaming, self._sent = True, 0
        transport.write(_HEAD)
        self._tick()

    def _tick(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._sent < self._chunks:
            transport.write(_http_chunk(_event(self._sent)))
            self._sent += 1
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)
            return
        transport.write(_http_chunk(_DONE) + b"0\r\n\r\n")
        self._streaming = False
        self._next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()


async def serve(host: str, port: int, chunks: int, interval_s: float) -> None:
    """Serve timed SSE streams until cancelled."""
    running = asyncio.get_running_loop()
    server = await running.create_server(
        lambda: _StreamingAnswer(chunks, interval_s),
        host,
        port,
        backlog=4096,
        reuse_address=True,
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="timed SSE upstream (OpenAI chunk shape)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    args = parser.parse_args()
    loop.run(serve(args.host, args.port, args.chunks, args.interval_ms / 1000.0))


if __name__ == "__main__":
    main()
