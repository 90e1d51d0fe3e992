"""Fake OpenAI chat workers with a KV cache: the first token is fast only for a known prefix.

A real inference server computes the prompt ("prefill") before its first token, and skips
the part it still holds in its KV cache from an earlier request. These workers copy that
in time only: each keeps an LRU of the prompt prefixes it has seen (the messages before the
first user message: the system prompt), bounded to `cache_prefixes` entries like a KV cache
bounded in memory. A request whose prefix is in it waits `hit_ms` plus the prefill of the
rest of the prompt; any other waits the prefill of the whole prompt, `prefill_us_per_char`
per character (about 40-80 ms for the bench's 2,700-5,300 character system prompts). Then
`tokens` content chunks follow `token_interval_ms` apart, a usage chunk when the client asked
(`usage.prompt_tokens_details.cached_tokens`: the cached characters / 4, as llama.cpp and
vLLM report their prompt-cache hits), and `data: [DONE]`.

The waits are timers, not work: a worker is never slower for having more requests at once,
so what tells two routing strategies apart is only how often a request finds its prefix.
One process serves every worker, one port each, each with its own cache. Run it alone with
`python -m bench.prefix_worker --ports 9001,9002 --cache-prefixes 16`.
"""

import argparse
import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from bench import loop

CHARS_PER_TOKEN = 4  # what the usage figures count a token as


@dataclass(frozen=True, slots=True)
class Timing:
    """How long a fake worker takes: its prefill, its first token on a hit, its tokens."""

    hit_ms: float = 2.0
    prefill_us_per_char: float = 15.0
    tokens: int = 8
    token_interval_ms: float = 20.0
    cache_prefixes: int = 16


def prefix_of(messages: list[Any]) -> str:
    """Return the messages before the first user message, as one text: the cacheable start."""
    parts = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") == "user":
            break
        parts.append(f"{message.get('role')}\x1f{message.get('content')}")
    return "\x1e".join(parts)


def prompt_chars(messages: list[Any]) -> int:
    """Return the characters of every message's text (what the prefill would compute)."""
    return sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))


class PrefixCache:
    """An LRU of prefix digests, bounded like a KV cache; `seen` also records the prefix."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[bytes, None] = OrderedDict()

    def seen(self, prefix: str) -> bool:
        """Return True when `prefix` was cached; either way it is the most recent one now."""
        if not prefix:
            return False
        key = hashlib.blake2b(prefix.encode(), digest_size=16).digest()
        hit = key in self._entries
        if hit:
            self._entries.move_to_end(key)
        else:
            self._entries[key] = None
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return hit

    def __len__(self) -> int:
        return len(self._entries)


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
    return b"data: " + orjson.dumps({**body, "model": model, "choices": [choice]}) + b"\n\n"


def _usage(prompt_chars_: int, cached_chars: int, tokens: int) -> dict[str, Any]:
    prompt_tokens = max(1, prompt_chars_ // CHARS_PER_TOKEN)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": tokens,
        "total_tokens": prompt_tokens + tokens,
        "prompt_tokens_details": {"cached_tokens": cached_chars // CHARS_PER_TOKEN},
    }


def worker_app(timing: Timing) -> web.Application:
    """Return one worker: its own cache, the chat route, a models list and hit counters."""
    cache = PrefixCache(timing.cache_prefixes)
    counts = {"hits": 0, "misses": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise web.HTTPBadRequest(text='{"error":"messages required"}')
        model = str(body.get("model", "fake"))
        prefix = prefix_of(messages)
        total = prompt_chars(messages)
        hit = cache.seen(prefix)
        counts["hits" if hit else "misses"] += 1
        cached = len(prefix) if hit else 0
        wait_ms = (timing.hit_ms if hit else 0.0) + (
            total - cached
        ) * timing.prefill_us_per_char / 1e3
        await asyncio.sleep(wait_ms / 1e3)
        usage = _usage(total, cached, timing.tokens)
        if not body.get("stream"):
            await asyncio.sleep(timing.tokens * timing.token_interval_ms / 1e3)
            message = {"role": "assistant", "content": "tok " * timing.tokens}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0}
            answer |= {"model": model, "choices": [choice], "usage": usage}
            return web.json_response(answer, dumps=lambda v: orjson.dumps(v).decode())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(timing.tokens):
            delta = {"role": "assistant", "content": "tok "} if index == 0 else {"content": "tok "}
            await response.write(_chunk(model, delta))
            await asyncio.sleep(timing.token_interval_ms / 1e3)
        await response.write(_chunk(model, {}, "length"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            last = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
            last |= {"model": model, "choices": [], "usage": usage}
            await response.write(b"data: " + orjson.dumps(last) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({**counts, "cached_prefixes": len(cache)})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    return app


async def serve(host: str, ports: list[int], timing: Timing) -> None:
    """Serve one worker per port until cancelled."""
    runners = []
    for port in ports:
        runner = web.AppRunner(worker_app(timing), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    defaults = Timing()
    parser = argparse.ArgumentParser(description="fake chat workers with a prefix cache")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", required=True, help="comma-separated, one worker each")
    parser.add_argument("--hit-ms", type=float, default=defaults.hit_ms)
    parser.add_argument("--prefill-us-per-char", type=float, default=defaults.prefill_us_per_char)
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--token-interval-ms", type=float, default=defaults.token_interval_ms)
    parser.add_argument("--cache-prefixes", type=int, default=defaults.cache_prefixes)
    args = parser.parse_args()
    timing = Timing(
        args.hit_ms,
        args.prefill_us_per_char,
        args.tokens,
        args.token_interval_ms,
        args.cache_prefixes,
    )
    loop.run(serve(args.host, [int(p) for p in args.ports.split(",")], timing))


if __name__ == "__main__":
    main()
