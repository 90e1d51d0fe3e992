"""The time-to-first-token client: a chat workload of shared system prompts, streamed.

The workload is `prompts` distinct system prompts (each `system_chars` long, drawn once from
a seeded generator, different from their first word on) and, per request, one of them chosen
at random with a new question: many users of a few assistants, the traffic whose prefixes a
KV cache can reuse. K connections each send such requests back to back, streamed, for a fixed
time; per request the client records the time from sending to the first chunk that carries
content (the TTFT a user sees), and from the usage chunk it asks for
(`stream_options.include_usage`) the prompt tokens and `prompt_tokens_details.cached_tokens`,
which llama.cpp, vLLM and the bench's fake workers fill from their prompt caches.

Run it alone with `python -m bench.ttft URL --model M --connections 16 --duration 5`: it
prints one JSON object.
"""

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench import loop
from bench.load import percentile
from bench.procs import BenchError, Processes, pinned

_TEXT = (
    "answer briefly and cite the policy section that applies to the customer request "
    "never invent prices or dates when unsure say so and offer to escalate the ticket "
    "format code in fenced blocks keep the tone friendly plain and precise at all times"
)
_WORDS = tuple(_TEXT.split(" "))
_REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Workload:
    """The shared system prompts and the shape of each request."""

    prompts: int = 40
    system_chars: tuple[int, int] = (2_700, 5_300)
    max_tokens: int = 4
    seed: int = 1

    def system_prompts(self) -> list[str]:
        """Return the system prompts: the same ones for every run with this seed."""
        rng = random.Random(self.seed)
        texts = []
        for index in range(self.prompts):
            length = rng.randint(*self.system_chars)
            words = [f"You are assistant {index} of the bench."]
            size = len(words[0])
            while size < length:
                word = rng.choice(_WORDS)
                words.append(word)
                size += len(word) + 1
            texts.append(" ".join(words)[:length])
        return texts


def request_body(model: str, system: str, question: str, max_tokens: int) -> bytes:
    """Return one streamed chat request with its usage asked for."""
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return orjson.dumps(body)


@dataclass
class Tally:
    """What every connection of one run measured."""

    ttft_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    with_usage: int = 0
    hits: int = 0  # requests whose usage said at least half of the prompt was cached
    errors: int = 0
    last_error: str = ""


async def _one_request(session: aiohttp.ClientSession, url: str, body: bytes, tally: Tally) -> None:
    started = time.perf_counter()
    first: float | None = None
    usage: Any = None
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as reply:
        if reply.status != 200:
            raise ValueError(f"{reply.status} {(await reply.read())[:200]!r}")
        async for line in reply.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            chunk = orjson.loads(payload)
            if first is None and any(
                (choice.get("delta") or {}).get("content") for choice in chunk.get("choices", ())
            ):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
    if first is None:
        raise ValueError("the stream carried no content")
    tally.ttft_ms.append((first - started) * 1e3)
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        tally.with_usage += 1
        tally.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        tally.cached_tokens += cached
        tally.hits += 2 * cached >= int(usage.get("prompt_tokens") or 0) > 0


async def _one_connection(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    workload: Workload,
    systems: list[str],
    rng: random.Random,
    deadline: float,
    tally: Tally,
) -> None:
    asked = 0
    while time.monotonic() < deadline:
        asked += 1
        system = rng.choice(systems)
        question = f"Question {rng.randrange(10**9)}: " + " ".join(rng.choices(_WORDS, k=8))
        body = request_body(model, system, question, workload.max_tokens)
        try:
            await asyncio.wait_for(_one_request(session, url, body, tally), _REQUEST_TIMEOUT_S)
        except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
            tally.errors += 1
            tally.last_error = repr(exc)[:300]
            await asyncio.sleep(0.05)


async def run_ttft(
    url: str, model: str, connections: int, duration_s: float, workload: Workload, seed: int
) -> dict[str, Any]:
    """Drive `url` for `duration_s` with `connections` streams at once; return the summary."""
    systems = workload.system_prompts()
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=None)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = started + duration_s
        tasks = [
            _one_connection(
                session,
                url,
                model,
                workload,
                systems,
                random.Random(seed * 1000 + i),
                deadline,
                tally,
            )
            for i in range(connections)
        ]
        await asyncio.gather(*tasks)
    return summary(tally, time.monotonic() - started)


def summary(tally: Tally, elapsed_s: float) -> dict[str, Any]:
    """Return the run's figures: TTFT quantiles, the requests and the cache's share."""
    ordered = sorted(tally.ttft_ms)
    return {
        "requests": len(ordered),
        "errors": tally.errors,
        "last_error": tally.last_error,
        "elapsed_s": round(elapsed_s, 3),
        "ttft_ms": {
            "p50": round(percentile(ordered, 0.50), 3),
            "p90": round(percentile(ordered, 0.90), 3),
            "p99": round(percentile(ordered, 0.99), 3),
            "mean": round(sum(ordered) / len(ordered), 3) if ordered else 0.0,
        },
        "prompt_tokens": tally.prompt_tokens,
        "cached_tokens": tally.cached_tokens,
        "cached_share": round(tally.cached_tokens / tally.prompt_tokens, 4)
        if tally.prompt_tokens
        else 0.0,
        "hit_share": round(tally.hits / tally.with_usage, 4) if tally.with_usage else 0.0,
    }


def run_subprocess(
    procs: Processes,
    url: str,
    model: str,
    connections: int,
    duration_s: float,
    workload: Workload,
    *,
    seed: int,
    cpu: int | None,
) -> dict[str, Any]:
    """Run this client in its own (optionally pinned) process and return its summary."""
    cmd = [sys.executable, "-m", "bench.ttft", url, "--model", model]
    cmd += ["--connections", str(connections), "--duration", str(duration_s)]
    cmd += ["--prompts", str(workload.prompts), "--max-tokens", str(workload.max_tokens)]
    cmd += ["--system-chars", f"{workload.system_chars[0]}-{workload.system_chars[1]}"]
    cmd += ["--workload-seed", str(workload.seed), "--seed", str(seed)]
    code, output = procs.run("ttft", pinned(cmd, cpu), timeout_s=duration_s + 60)
    lines = output.strip().splitlines()
    if code != 0 or not lines:
        raise BenchError(f"the TTFT client failed (exit {code}):\n{output[-2000:]}")
    document: dict[str, Any] = json.loads(lines[-1])
    return document


def main() -> None:
    defaults = Workload()
    parser = argparse.ArgumentParser(description="streamed chat TTFT over shared system prompts")
    parser.add_argument("url", help="the chat completions URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--prompts", type=int, default=defaults.prompts)
    parser.add_argument("--system-chars", default="2700-5300", help="LOW-HIGH characters")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--workload-seed", type=int, default=defaults.seed)
    parser.add_argument("--seed", type=int, default=1, help="of the request sequence")
    args = parser.parse_args()
    low, _, high = args.system_chars.partition("-")
    workload = Workload(
        args.prompts, (int(low), int(high or low)), args.max_tokens, args.workload_seed
    )
    result = loop.run(
        run_ttft(args.url, args.model, args.connections, args.duration, workload, args.seed)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
