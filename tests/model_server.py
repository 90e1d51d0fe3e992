"""A fake model server that behaves like one where translation fidelity is concerned.

It answers as OpenAI-compatible servers, Ollama, or a seed-style template service do, and
keeps the rules a real model server keeps: `max_tokens` (`num_predict`) cuts the answer and
says `length`; usage counts the words asked and answered; given tools and a user's turn it
calls the first tool; given a tool's result it answers with it. Streams are cut into one word
per event; the OpenAI stream sends usage in a last chunk only when asked
(`stream_options.include_usage`), as vLLM and llama.cpp do.
"""

import asyncio
import base64
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

TOOL_ARGUMENTS = {"city": "Paris", "days": 2}


def answer_words(name: str, prompt: str) -> list[str]:
    words = f"{name} says {prompt}".split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def text_of(content: Any) -> str:
    """A message's text: its content string, or its text parts joined."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free port of 127.0.0.1; return its runner and base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@dataclass
class Turn:
    """What the server decided to answer to one request."""

    pieces: list[str]
    finish: str  # in OpenAI's words: stop, length, tool_calls
    prompt_tokens: int
    tool: str | None = None  # the tool it calls


def decide(name: str, messages: list[dict[str, Any]], limit: Any, tools: Any) -> Turn:
    prompt_tokens = sum(len(text_of(m.get("content")).split()) for m in messages)
    last = messages[-1]
    if tools and last.get("role") == "user":
        function = tools[0].get("function", tools[0])
        return Turn([], "tool_calls", prompt_tokens, tool=function["name"])
    if last.get("role") == "tool":
        pieces = answer_words(name, "tool said " + text_of(last.get("content")))
    else:
        pieces = answer_words(name, text_of(last.get("content")))
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return Turn(pieces[:limit], "length", prompt_tokens)
    return Turn(pieces, "stop", prompt_tokens)


@dataclass
class ModelServer:
    protocol: str = "openai"  # "openai", "ollama" or "template"
    name: str = "w"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)  # sent with an error status
    received: list[Any] = field(default_factory=list)
    headers_received: list[dict[str, str]] = field(default_factory=list)
    reports_usage: bool = True  # False: an OpenAI or Ollama server that never says its counts
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        if self.protocol == "openai":
            app.router.add_post("/v1/chat/completions", self._openai_chat)
            app.router.add_post("/v1/completions", self._openai_completion)
            app.router.add_post("/v1/embeddings", self._openai_embeddings)
        elif self.protocol == "anthropic":
            app.router.add_post("/v1/messages", self._anthropic)
            app.router.add_post("/v1/messages/count_tokens", self._anthropic_count)
        elif self.protocol == "ollama":
            app.router.add_post("/api/chat", self._ollama)
            app.router.add_post("/api/generate", self._ollama)
            app.router.add_post("/api/embed", self._ollama_embed)
        else:
            app.router.add_post("/gen", self._template)
        self._runner, self.url = await serve(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return {"openai": f"{self.url}/v1"}.get(self.protocol, self.url)

    @property
    def last(self) -> Any:
        return self.received[-1]

    async def _read(self, request: web.Request) -> Any:
        sent = orjson.loads(await request.read())
        self.received.append(sent)
        self.headers_received.append(dict(request.headers))
        return sent

    def _refusal(self) -> web.Response | None:
        if self.status < 400:
            return None
        body = {"error": {"message": f"{self.name} refused: prompt too long", "type": "x"}}
        return web.json_response(body, status=self.status, headers=self.headers)

    async def _stream(
        self, request: web.Request, lines: list[bytes], kind: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        for line in lines:
            await response.write(line)
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    # OpenAI

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        if (refusal := self._refusal()) is not None:
            return refusal
        limit = sent.get("max_completion_tokens") or sent.get("max_tokens")
        turn = decide(self.name, sent["messages"], limit, sent.get("tools"))
        usage = {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": max(len(turn.pieces), 1),
            "total_tokens": turn.prompt_tokens + max(len(turn.pieces), 1),
        }
        calls = []
        if turn.tool:
            arguments = orjson.dumps(TOOL_ARGUMENTS).decode()
            calls = [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": turn.tool, "arguments": arguments},
                }
            ]
        head = {"id": "chatcmpl-1", "created": 1, "model": sent["model"]}
        if not sent.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(turn.pieces) or None}
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "finish_reason": turn.finish}
            return web.json_response(
                {**head, "object": "chat.completion", "choices": [choice]}
                | ({"usage": usage} if self.reports_usage else {})
            )

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
            data = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            return b"data: " + orjson.dumps(data) + b"\n\n"

        lines = [chunk({"role": "assistant", "content": ""})]
        lines += [chunk({"content": p}) for p in turn.pieces]
        if calls:  # the arguments in two fragments, as servers stream them
            call = calls[0]
            args = call["function"]["arguments"]
            first = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": turn.tool, "arguments": args[:5]},
            }
            lines.append(chunk({"tool_calls": [first]}))
            lines.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}))
        lines.append(chunk({}, turn.finish))
        if self.reports_usage and (sent.get("stream_options") or {}).get("include_usage"):
            lines.append(
                b"data: "
                + orjson.dumps(
                    {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                )
                + b"\n\n"
            )
        lines.append(b"data: [DONE]\n\n")
        return await self._stream(request, lines, "text/event-stream")

    async def _openai_completion(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        turn = decide(
            self.name, [{"role": "user", "content": sent["prompt"]}], sent.get("max_tokens"), None
        )
        usage = {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": len(turn.pieces),
            "total_tokens": turn.prompt_tokens + len(turn.pieces),
        }
        head = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": sent["model"]}
        if not sent.get("stream"):
            choice = {
                "index": 0,
                "text": "".join(turn.pieces),
                "finish_reason": turn.finish,
                "logprobs": None,
            }
            return web.json_response({**head, "choices": [choice], "usage": usage})
        lines = [
            b"data: "
            + orjson.dumps({**head, "choices": [{"index": 0, "text": p, "finish_reason": None}]})
            + b"\n\n"
            for p in turn.pieces
        ]
        lines.append(
            b"data: "
            + orjson.dumps(
                {**head, "choices": [{"index": 0, "text": "", "finish_reason": turn.finish}]}
            )
            + b"\n\n"
        )
        if (sent.get("stream_options") or {}).get("include_usage"):
            lines.append(
                b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
            )
        lines.append(b"data: [DONE]\n\n")
        return await self._stream(request, lines, "text/event-stream")

    async def _openai_embeddings(self, request: web.Request) -> web.Response:
        sent = await self._read(request)
        inputs = sent["input"] if isinstance(sent["input"], list) else [sent["input"]]
        size = sent.get("dimensions") or 3
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(text)) + k for k in range(size)],
            }
            for i, text in enumerate(inputs)
        ]
        if sent.get("encoding_format") == "base64":  # float32 little-endian, as OpenAI does
            for item in data:
                packed = array("f", item["embedding"]).tobytes()
                item["embedding"] = base64.b64encode(packed).decode()
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        body = {"object": "list", "data": data, "model": sent["model"], "usage": usage}
        return web.json_response(body)

    # Ollama

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        if (refusal := self._refusal()) is not None:
            return refusal
        chat = request.path == "/api/chat"
        messages = sent["messages"] if chat else [{"role": "user", "content": sent["prompt"]}]
        limit = (sent.get("options") or {}).get("num_predict")
        turn = decide(self.name, messages, limit, sent.get("tools") if chat else None)
        reason = "length" if turn.finish == "length" else "stop"
        counts = {"prompt_eval_count": turn.prompt_tokens, "eval_count": max(len(turn.pieces), 1)}
        if not self.reports_usage:
            counts = {}
        calls = (
            [{"function": {"name": turn.tool, "arguments": TOOL_ARGUMENTS}}] if turn.tool else []
        )

        def line(text: str, done: bool, **extra: Any) -> dict[str, Any]:
            out: dict[str, Any] = {"model": sent["model"], "created_at": "2026-01-01T00:00:00Z"}
            if chat:
                out["message"] = {"role": "assistant", "content": text, **extra}
            else:
                out["response"] = text
            out["done"] = done
            if done:
                out.update(done_reason=reason, **counts)
            return out

        if sent.get("stream", True) is False:
            extra = {"tool_calls": calls} if calls else {}
            return web.json_response(line("".join(turn.pieces), True, **extra))
        lines = [orjson.dumps(line(p, False)) + b"\n" for p in turn.pieces]
        if calls:
            lines.append(orjson.dumps(line("", False, tool_calls=calls)) + b"\n")
        lines.append(orjson.dumps(line("", True)) + b"\n")
        return await self._stream(request, lines, "application/x-ndjson")

    async def _ollama_embed(self, request: web.Request) -> web.Response:
        sent = await self._read(request)
        inputs = sent["input"] if isinstance(sent["input"], list) else [sent["input"]]
        size = sent.get("dimensions") or 2
        vectors = [[float(len(text)) + k for k in range(size)] for text in inputs]
        return web.json_response(
            {"model": sent["model"], "embeddings": vectors, "prompt_eval_count": len(inputs)}
        )

    # Anthropic

    @staticmethod
    def _anthropic_messages(sent: Any) -> list[dict[str, Any]]:
        """The request's messages in OpenAI's terms, for `decide`."""
        out: list[dict[str, Any]] = []
        for m in sent["messages"]:
            content = m["content"]
            if isinstance(content, list) and content and content[0].get("type") == "tool_result":
                out.append({"role": "tool", "content": content[0]["content"]})
            else:
                out.append({"role": m["role"], "content": text_of(content)})
        return out

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        if (refusal := self._refusal()) is not None:
            return refusal
        tools = [{"function": {"name": t["name"]}} for t in sent.get("tools") or ()]
        turn = decide(self.name, self._anthropic_messages(sent), sent.get("max_tokens"), tools)
        stop = {"length": "max_tokens", "tool_calls": "tool_use"}.get(turn.finish, "end_turn")
        usage = {"input_tokens": turn.prompt_tokens, "output_tokens": max(len(turn.pieces), 1)}
        content: list[dict[str, Any]] = []
        if turn.pieces:
            content.append({"type": "text", "text": "".join(turn.pieces)})
        if turn.tool:
            content.append(
                {"type": "tool_use", "id": "toolu_1", "name": turn.tool, "input": TOOL_ARGUMENTS}
            )
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": sent["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if not sent.get("stream"):
            return web.json_response(message)

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"

        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**usage, "output_tokens": 1},
        }
        lines = [event("message_start", {"type": "message_start", "message": start})]
        index = 0
        if turn.pieces:
            block = {"type": "text", "text": ""}
            lines.append(
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                )
            )
            for piece in turn.pieces:
                delta = {"type": "text_delta", "text": piece}
                lines.append(
                    event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                    )
                )
            lines.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        if turn.tool:
            block = {"type": "tool_use", "id": "toolu_1", "name": turn.tool, "input": {}}
            lines.append(
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
            )
            args = orjson.dumps(TOOL_ARGUMENTS).decode()
            for part in (args[:5], args[5:]):
                delta = {"type": "input_json_delta", "partial_json": part}
                lines.append(
                    event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
            lines.append(
                event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
        end = {"stop_reason": stop, "stop_sequence": None}
        lines.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": end,
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        lines.append(event("message_stop", {"type": "message_stop"}))
        return await self._stream(request, lines, "text/event-stream")

    async def _anthropic_count(self, request: web.Request) -> web.Response:
        sent = await self._read(request)
        words = sum(len(text_of(m.get("content")).split()) for m in self._anthropic_messages(sent))
        return web.json_response({"input_tokens": words})

    # A seed-style service with its own JSON: {"ask": ..., "limit": ..., "stream": ...}

    async def _template(self, request: web.Request) -> web.StreamResponse:
        sent = await self._read(request)
        if (refusal := self._refusal()) is not None:
            return refusal
        turn = decide(
            self.name, [{"role": "user", "content": sent["ask"]}], sent.get("limit"), None
        )
        stop = "max_tokens" if turn.finish == "length" else "eos"
        tokens = {"in": turn.prompt_tokens, "out": len(turn.pieces)}
        if not sent.get("stream"):
            return web.json_response(
                {"out": {"text": "".join(turn.pieces), "stop": stop, "tokens": tokens}}
            )
        lines = [b"data: " + orjson.dumps({"t": p}) + b"\n\n" for p in turn.pieces]
        lines.append(b"data: " + orjson.dumps({"t": "", "stop": stop, "tokens": tokens}) + b"\n\n")
        return await self._stream(request, lines, "text/event-stream")
