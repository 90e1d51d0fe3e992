"""A deterministic model server that can go on from its own answer, and can die midway.

Every `StoryServer` answers a prompt with the same tokens (`story(prompt)`: words with their
leading space, now and then a lone newline, some non-ASCII), one token per streamed event, as
vLLM and llama.cpp stream. Asked to continue a partial answer, it does what real servers do:

- OpenAI chat: a final assistant message is continued only with `continue_final_message` true
  and `add_generation_prompt` false (vLLM's and llama.cpp's flags); without them it answers a
  new turn from the start, as vLLM would, so a gateway that forgot them duplicates text;
- OpenAI completions: a prompt that ends with part of the answer goes on from there;
- Ollama chat and Anthropic Messages continue a final assistant message as it is; Anthropic
  refuses one that ends in whitespace (400), as its API does.

A continuation must start where the answer really is (a prefix of whole tokens, trailing
whitespace left out), else the server answers 400: a gateway that sent the wrong text fails.
Usage counts prompt words plus the tokens it was given of its answer, and the tokens it sent.

`breaks` makes it fail: each request takes the next entry, `("die", n)` closes the connection
after n tokens, `("stall", n)` stops sending after n tokens (and holds the connection); an
empty list or None means the request is answered in full.
"""

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.model_server import serve, text_of

WORDS = ("river", "stone", "light", "café", "north", "ember", "naïve", "tide", "über", "glass")
WORDS += ("日本", "moss", "owl", "quiet", "salt", "wind", "iron", "plum", "reed", "vale")
TOOL_ARGUMENTS = '{"city": "Paris", "days": 2}'


def story(prompt: str, length: int = 48) -> list[str]:
    """The answer's tokens for `prompt`: the same from every server, every run."""
    rng = random.Random(prompt)
    tokens: list[str] = []
    for i in range(length):
        if i and rng.random() < 0.12:
            tokens.append("\n")
        else:
            tokens.append(("" if i == 0 else " ") + rng.choice(WORDS))
    return tokens


class Refused(Exception):
    """The request cannot be answered (a 400 with this message)."""


@dataclass
class Plan:
    """What one request gets: tokens to send, why it ends, and its usage."""

    tokens: list[str]
    finish: str  # stop, length or tool_calls
    prompt_tokens: int
    tool: bool = False


def plan(question: str, given: str, limit: Any, *, tools: bool = False) -> Plan:
    """Answer `question`, going on from `given` (the part of the answer already written)."""
    full = story(question)
    prompt_tokens = len(question.split())
    if tools:
        return Plan([], "tool_calls", prompt_tokens, tool=True)
    start = 0
    if given:
        written = ""
        while start < len(full) and len(written) < len(given):
            written += full[start]
            start += 1
        if written != given:
            raise Refused(f"the answer so far is not this model's: {given[-40:]!r}")
    rest = full[start:]
    if isinstance(limit, int) and 0 < limit < len(rest):
        return Plan(rest[:limit], "length", prompt_tokens + start)
    return Plan(rest, "stop", prompt_tokens + start)


@dataclass
class StoryServer:
    protocol: str = "openai"  # openai, ollama or anthropic
    breaks: list[tuple[str, int] | None] = field(default_factory=list)
    # Whether a request that continues an answer takes a break too (else only fresh ones do).
    breaks_continuations: bool = False
    received: list[Any] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _stalled: list[asyncio.Event] = field(default_factory=list)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/completions", self._openai_completion)
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/v1/messages", self._anthropic)
        self._runner, self.url = await serve(app)

    async def stop(self) -> None:
        for stalled in self._stalled:
            stalled.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1" if self.protocol == "openai" else self.url

    def registration(self, model: str, **extra: Any) -> dict[str, Any]:
        return {
            "model_name": model,
            "req_url_template": self.base_url,
            "preset": self.protocol,
            **extra,
        }

    async def _read(self, request: web.Request) -> Any:
        sent = orjson.loads(await request.read())
        self.received.append(sent)
        return sent

    async def _send(
        self,
        request: web.Request,
        kind: str,
        parts: tuple[list[bytes], list[bytes], list[bytes]],
        continuing: bool,
    ) -> web.StreamResponse:
        """Stream the head, the token events, then the tail, failing as planned."""
        head, body, tail = parts
        takes = self.breaks and (self.breaks_continuations or not continuing)
        fault = self.breaks.pop(0) if takes else None
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        for line in head:
            await response.write(line)
        for n, line in enumerate(body):
            if fault is not None and n == fault[1]:
                await self._fail(request, fault[0])
                return response
            await response.write(line)
            await asyncio.sleep(0)
        for line in tail:
            await response.write(line)
        await response.write_eof()
        return response

    async def _fail(self, request: web.Request, how: str) -> None:
        if how == "stall":
            stalled = asyncio.Event()
            self._stalled.append(stalled)
            await stalled.wait()  # until the gateway gives up on it, or the server stops
            return
        transport = request.transport
        if transport is not None:
            transport.abort()  # as a crashed process's socket: the stream just stops

    @staticmethod
    def _refused(message: str) -> web.Response:
        error = {"error": {"message": message, "type": "invalid_request_error"}}
        return web.json_response(error, status=400)

    # OpenAI

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        messages = sent["messages"]
        question = next(text_of(m["content"]) for m in reversed(messages) if m["role"] == "user")
        given = ""
        if messages[-1]["role"] == "assistant":
            continues = sent.get("continue_final_message") is True
            if continues and sent.get("add_generation_prompt") is not False:
                return self._refused("continue_final_message needs add_generation_prompt false")
            if continues:
                given = text_of(messages[-1]["content"])
        limit = sent.get("max_completion_tokens") or sent.get("max_tokens")
        try:
            turn = plan(question, given, limit, tools=bool(sent.get("tools")))
        except Refused as exc:
            return self._refused(str(exc))
        head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1}
        head["model"] = sent["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return _sse({**head, "choices": [choice]})

        body = [chunk({"content": token}) for token in turn.tokens]
        if turn.tool:
            first = {"index": 0, "id": "call_s", "type": "function"}
            first["function"] = {"name": sent["tools"][0]["function"]["name"], "arguments": ""}
            body = [chunk({"tool_calls": [first]})]
            body += [
                chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": TOOL_ARGUMENTS[i:j]}}]}
                )
                for i, j in ((0, 9), (9, 18), (18, None))
            ]
        tail = [chunk({}, turn.finish)]
        if (sent.get("stream_options") or {}).get("include_usage"):
            usage = _usage(turn)
            tail.append(_sse({**head, "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        first = [chunk({"role": "assistant", "content": ""})]
        return await self._send(request, "text/event-stream", (first, body, tail), bool(given))

    async def _openai_completion(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        prompt: str = sent["prompt"]
        question, sep, given = prompt.partition("\n\n")  # the client's prompt ends in a blank line
        if not sep:
            return self._refused("this model reads a question, then a blank line")
        try:
            turn = plan(question, given, sent.get("max_tokens"))
        except Refused as exc:
            return self._refused(str(exc))
        head = {"id": "cmpl-s", "object": "text_completion", "created": 1, "model": sent["model"]}

        def chunk(text: str, finish: str | None = None) -> bytes:
            return _sse({**head, "choices": [{"index": 0, "text": text, "finish_reason": finish}]})

        tail = [chunk("", turn.finish)]
        if (sent.get("stream_options") or {}).get("include_usage"):
            tail.append(_sse({**head, "choices": [], "usage": _usage(turn)}))
        tail.append(b"data: [DONE]\n\n")
        body = [chunk(token) for token in turn.tokens]
        return await self._send(request, "text/event-stream", ([], body, tail), bool(given))

    # Ollama

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        messages = sent["messages"]
        question = next(text_of(m["content"]) for m in reversed(messages) if m["role"] == "user")
        given = text_of(messages[-1]["content"]) if messages[-1]["role"] == "assistant" else ""
        limit = (sent.get("options") or {}).get("num_predict")
        try:
            turn = plan(question, given, limit)
        except Refused as exc:
            return self._refused(str(exc))
        model = sent["model"]

        def line(text: str) -> bytes:
            message = {"role": "assistant", "content": text}
            doc = {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": message}
            return orjson.dumps({**doc, "done": False}) + b"\n"

        last = {
            "model": model,
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": turn.finish,
            "prompt_eval_count": turn.prompt_tokens,
            "eval_count": len(turn.tokens),
        }
        body = [line(token) for token in turn.tokens]
        parts = ([], body, [orjson.dumps(last) + b"\n"])
        return await self._send(request, "application/x-ndjson", parts, bool(given))

    # Anthropic

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        messages = sent["messages"]
        question = next(text_of(m["content"]) for m in reversed(messages) if m["role"] == "user")
        given = ""
        if messages[-1]["role"] == "assistant":
            given = text_of(messages[-1]["content"])
            if given != given.rstrip():
                return self._refused("final assistant content cannot end with trailing whitespace")
        try:
            turn = plan(question, given, sent.get("max_tokens"))
        except Refused as exc:
            return self._refused(str(exc))

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        message = {
            "id": "msg_s",
            "type": "message",
            "role": "assistant",
            "model": sent["model"],
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": turn.prompt_tokens, "output_tokens": 0},
        }
        head = [
            event("message_start", {"type": "message_start", "message": message}),
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
        ]
        body = [
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": t},
                },
            )
            for t in turn.tokens
        ]
        stop = {"stop": "end_turn", "length": "max_tokens"}[turn.finish]
        tail = [
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": len(turn.tokens)},
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]
        return await self._send(request, "text/event-stream", (head, body, tail), bool(given))


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _usage(turn: Plan) -> dict[str, int]:
    completion = len(turn.tokens)
    return {
        "prompt_tokens": turn.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": turn.prompt_tokens + completion,
    }
