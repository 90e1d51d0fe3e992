"""Fake model workers: real HTTP servers that answer like an inference service would.

The default speaks the seed document's custom JSON protocol: it takes `{"input", ...}` and
answers `{"data": {"items": [{"attributes": {"answer": ...}}]}}`. Behaviour can be changed
while it runs (status, delay, raw body) to stage the faults a real worker produces.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class FakeWorker:
    """`metrics` is served at GET /metrics (not counted as a request); `active` and `peak`
    count the requests it is answering now and the most it answered at once."""

    name: str = "worker"
    status: int = 200
    delay_s: float = 0.0
    raw: bytes | None = None  # answer these bytes verbatim instead of the seed JSON
    metrics: str | None = None  # a Prometheus text page, e.g. vllm_metrics(running=3)
    received: list[Received] = field(default_factory=list)
    url: str = ""
    active: int = 0
    peak: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def count(self) -> int:
        return len(self.received)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(text=self.metrics, content_type="text/plain")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self._answer(request)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.raw is not None:
            return web.Response(status=self.status, body=self.raw)
        if self.status >= 400:
            return web.json_response({"error": f"{self.name} failed"}, status=self.status)
        prompt: Any = request.query.get("q")
        if body:
            sent = orjson.loads(body)
            prompt = sent.get("input", sent) if isinstance(sent, dict) else sent
        answer = {"data": {"items": [{"attributes": {"answer": f"{self.name}: {prompt}"}}]}}
        return web.json_response(answer)


def vllm_metrics(running: int = 0, waiting: int = 0, kv: float = 0.0) -> str:
    """A vLLM /metrics page (the gauges the gateway reads, among others it skips)."""
    labels = '{engine="0",model_name="m"}'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{labels} {running}.0\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{labels} {waiting}.0\n"
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        f"vllm:gpu_cache_usage_perc{labels} {kv}\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f"vllm:prompt_tokens_total{labels} 12345.0\n"
    )


def reply_pieces(name: str, prompt: str) -> list[str]:
    """The answer a protocol worker gives, cut into the pieces it streams."""
    words = f"{name} says {prompt}".split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


@dataclass
class ProtocolWorker:
    """A fake OpenAI-compatible (vLLM-like) or Ollama server.

    `chunk_delay_s` spaces streamed pieces; `die_after` closes the connection abruptly after
    that many pieces; `client_gone` is set when the gateway closes a stream early;
    `finished` is set when a stream was written to its end. Its models list (`GET /v1/models`,
    `GET /api/tags`) holds `models`; with a `status` of 400 or more it fails too, echoing the
    Authorization header it was sent (as careless servers do).
    """

    protocol: str = "openai"  # or "ollama"
    name: str = "w"
    chunk_delay_s: float = 0.0
    die_after: int | None = None
    status: int = 200
    error_message: str = ""  # the message of an error answer (default "<name> failed")
    metrics: str | None = None  # served at GET /metrics (openai only)
    models: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    url: str = ""
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        if self.protocol == "openai":
            app.router.add_get("/metrics", self._metrics)
            app.router.add_post("/v1/chat/completions", self._openai_chat)
            app.router.add_post("/v1/completions", self._openai_completion)
            app.router.add_post("/v1/embeddings", self._openai_embeddings)
            app.router.add_get("/v1/models", self._models)
        else:
            app.router.add_post("/api/chat", self._ollama_chat)
            app.router.add_post("/api/generate", self._ollama_generate)
            app.router.add_post("/api/embed", self._ollama_embed)
            app.router.add_get("/api/tags", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1" if self.protocol == "openai" else self.url

    @property
    def count(self) -> int:
        return len(self.received)

    async def _record(self, request: web.Request) -> Any:
        body = await request.read()
        self.received.append(
            Received(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        return orjson.loads(body)

    async def _stream(
        self, request: web.Request, lines: list[bytes], content_type: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        try:
            for i, line in enumerate(lines):
                if self.die_after is not None and i >= self.die_after:
                    assert request.transport is not None
                    request.transport.abort()  # a crash: no end of stream, no more bytes
                    return response
                await response.write(line)
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            await response.write_eof()
            self.finished.set()
        except (ConnectionResetError, asyncio.CancelledError):
            self.client_gone.set()
            raise
        return response

    async def _models(self, request: web.Request) -> web.Response:
        self.received.append(
            Received(request.method, request.path, dict(request.query), dict(request.headers), b"")
        )
        if self.status >= 400:
            said = f"{self.name} refused {request.headers.get('Authorization', 'no key')}"
            return web.json_response({"error": {"message": said}}, status=self.status)
        if self.protocol == "openai":
            data = [
                {"id": m, "object": "model", "created": 1, "owned_by": "me"} for m in self.models
            ]
            return web.json_response({"object": "list", "data": data})
        tags = [{"name": m, "model": m, "size": 1, "digest": "0" * 12} for m in self.models]
        return web.json_response({"models": tags})

    def _error(self) -> web.Response | None:
        if self.status >= 400:
            message = self.error_message or f"{self.name} failed"
            return web.json_response({"error": {"message": message}}, status=self.status)
        return None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(text=self.metrics, content_type="text/plain")

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        sent = await self._record(request)
        if (error := self._error()) is not None:
            return error
        prompt = sent["messages"][-1]["content"]
        pieces = reply_pieces(self.name, prompt)
        model = sent["model"]
        if not sent.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(pieces)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        lines = [chunk({"role": "assistant", "content": ""})]
        lines += [chunk({"content": piece}) for piece in pieces]
        lines += [chunk({}, "stop"), b"data: [DONE]\n\n"]
        return await self._stream(request, lines, "text/event-stream")

    async def _openai_completion(self, request: web.Request) -> web.StreamResponse:
        sent = await self._record(request)
        pieces = reply_pieces(self.name, sent["prompt"])
        base = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 1,
            "model": sent["model"],
        }
        if not sent.get("stream"):
            choice = {
                "index": 0,
                "text": "".join(pieces),
                "finish_reason": "stop",
                "logprobs": None,
            }
            return web.json_response({**base, "choices": [choice]})
        lines = [
            b"data: "
            + orjson.dumps({**base, "choices": [{"index": 0, "text": p, "finish_reason": None}]})
            + b"\n\n"
            for p in pieces
        ]
        return await self._stream(request, [*lines, b"data: [DONE]\n\n"], "text/event-stream")

    async def _openai_embeddings(self, request: web.Request) -> web.Response:
        sent = await self._record(request)
        inputs = sent["input"] if isinstance(sent["input"], list) else [sent["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, 0.0]}
            for i, text in enumerate(inputs)
        ]
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        return web.json_response(
            {"object": "list", "data": data, "model": sent["model"], "usage": usage}
        )

    async def _ollama_answer(
        self, request: web.Request, sent: Any, pieces: list[str], key: str
    ) -> web.StreamResponse:
        def line(text: str, done: bool) -> dict[str, Any]:
            value: Any = {"role": "assistant", "content": text} if key == "message" else text
            out = {
                "model": sent["model"],
                "created_at": "2026-01-01T00:00:00Z",
                key: value,
                "done": done,
            }
            if done:
                out["done_reason"] = "stop"
            return out

        if sent.get("stream", True) is False:
            return web.json_response(line("".join(pieces), True))
        lines = [orjson.dumps(line(p, False)) + b"\n" for p in pieces]
        lines.append(orjson.dumps(line("", True)) + b"\n")
        return await self._stream(request, lines, "application/x-ndjson")

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        sent = await self._record(request)
        if (error := self._error()) is not None:
            return error
        pieces = reply_pieces(self.name, sent["messages"][-1]["content"])
        return await self._ollama_answer(request, sent, pieces, "message")

    async def _ollama_generate(self, request: web.Request) -> web.StreamResponse:
        sent = await self._record(request)
        pieces = reply_pieces(self.name, sent["prompt"])
        return await self._ollama_answer(request, sent, pieces, "response")

    async def _ollama_embed(self, request: web.Request) -> web.Response:
        sent = await self._record(request)
        inputs = sent["input"] if isinstance(sent["input"], list) else [sent["input"]]
        vectors = [[float(len(text)), 2.0] for text in inputs]
        return web.json_response({"model": sent["model"], "embeddings": vectors})
