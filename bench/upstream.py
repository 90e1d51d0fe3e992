"""The fixed-answer upstream: nginx when installed, else a raw-socket asyncio server.

Either way a POST to /v1/chat/completions gets a fixed OpenAI chat.completion, and every other
request, whatever its method, path or body, the same JSON answer in the seed worker's shape,
on a keep-alive HTTP/1.1 connection. The Python server parses only what keep-alive and that
choice need (the request line, the end of the head and Content-Length), so it stays far
cheaper per request than anything it is put behind. Run it alone with
`python -m bench.upstream --port P`.
"""

import argparse
import asyncio
import shutil
from pathlib import Path
from typing import cast

from bench import loop

ANSWER = b'{"data":{"items":[{"attributes":{"answer":"ok"}}]}}'
ANSWER_TEXT = "ok"
PATH = "/api/generate"
OPENAI_PATH = "/v1/chat/completions"
# Shaped like a real server's answer (id, created, usage) so LiteLLM takes its usual path.
OPENAI_ANSWER = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-openai","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"ok"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)


def _response(answer: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}"
    return head.encode() + b"\r\n\r\n" + answer


_RESPONSE = _response(ANSWER)
_OPENAI_RESPONSE = _response(OPENAI_ANSWER)
_OPENAI_REQUEST_LINE = f"post {OPENAI_PATH} ".encode()
_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 8 * 1024 * 1024


class _FixedAnswer(asyncio.Protocol):
    """Answer each complete request on the connection with its fixed answer (pipelining-safe)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self._buffer) > _MAX_HEAD_BYTES:
                    transport.close()
                return
            head = bytes(self._buffer[:head_end]).lower()
            length, close = request_body_length(head), b"\nconnection: close" in head
            if length < 0 or length > _MAX_BODY_BYTES:
                transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                transport.close()
                return
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            del self._buffer[:end]
            is_openai = head.startswith(_OPENAI_REQUEST_LINE)
            transport.write(_OPENAI_RESPONSE if is_openai else _RESPONSE)
            if close:
                transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def request_body_length(head: bytes) -> int:
    """Return the body length from a lower-cased request head (-1 for chunked bodies)."""
    if b"\ntransfer-encoding:" in head:
        return -1
    start = head.find(b"\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\ncontent-length:")
    end = head.find(b"\r", start)
    try:
        return int(head[start : end if end >= 0 else len(head)])
    except ValueError:
        return -1


async def serve(host: str, port: int) -> None:
    """Serve the fixed answer until cancelled."""
    running = asyncio.get_running_loop()
    server = await running.create_server(_FixedAnswer, host, port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


def nginx_config(port: int, prefix: Path) -> str:
    """Return an nginx.conf serving the fixed answers on 127.0.0.1:port from `prefix`."""
    answer, openai_answer = _nginx_string(ANSWER), _nginx_string(OPENAI_ANSWER)
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type application/json;
            return 200 '{answer}';
        }}
        location = {OPENAI_PATH} {{
            default_type application/json;
            return 200 '{openai_answer}';
        }}
    }}
}}
"""


def _nginx_string(answer: bytes) -> str:
    """Return `answer` quoted for a single-quoted nginx string."""
    return answer.decode().replace("\\", "\\\\").replace("'", "\\'")


def nginx_command(port: int, prefix: Path) -> list[str] | None:
    """Write the config under `prefix` and return the nginx command, or None without nginx."""
    binary = shutil.which("nginx")
    if binary is None:
        return None
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(port, prefix), encoding="utf-8")
    # -e: nginx opens its error log before reading the config; keep it out of /var/log.
    return [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "nginx-error.log")]


def main() -> None:
    parser = argparse.ArgumentParser(description="fixed-answer HTTP/1.1 upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    loop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
