"""Usage accounting against a real llama.cpp `llama-server`, whose token counts are real.

What the gateway records for each answer must be what the same server reports when asked
directly (greedy decoding: the same answer, so the same counts), whether the client's request
is passed through (whole, and streamed without asking for usage: the gateway asks, and strips
the chunk) or translated (an Ollama client).
"""

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Gateway
from tests.gateway.test_usage import settle, stream_usage_chunks, usage_report
from tests.llama.server import LlamaServer

HELLO = [{"role": "user", "content": "hello there"}]
MAX_TOKENS = 8


async def _direct_usage(llama: LlamaServer) -> dict[str, Any]:
    body = {"model": "tiny", "messages": HELLO, "temperature": 0.0, "max_tokens": MAX_TOKENS}
    async with httpx.AsyncClient(timeout=60) as http:
        reply = await http.post(f"{llama.openai_url}/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    usage: dict[str, Any] = reply.json()["usage"]
    return usage


@pytest.mark.parametrize(
    ("path", "stream"),
    [
        ("/v1/chat/completions", False),
        ("/v1/chat/completions", True),
        ("/api/chat", False),
        ("/api/chat", True),
    ],
    ids=["openai-whole", "openai-stream", "ollama-whole", "ollama-stream"],
)
async def test_recorded_usage_is_what_llama_server_counts(
    gateway: Gateway, llama_server: LlamaServer, path: str, stream: bool
) -> None:
    direct = await _direct_usage(llama_server)
    async with gateway.client() as http:
        body = {
            "model_name": "tiny",
            "req_url_template": llama_server.openai_url,
            "preset": "openai",
        }
        assert (await http.post("/api/server/register", json=body)).status_code == 200
        if path == "/api/chat":
            ask: dict[str, Any] = {
                "model": "tiny",
                "messages": HELLO,
                "stream": stream,
                "options": {"temperature": 0.0, "num_predict": MAX_TOKENS},
            }
        else:
            ask = {
                "model": "tiny",
                "messages": HELLO,
                "stream": stream,
                "temperature": 0.0,
                "max_tokens": MAX_TOKENS,
            }
        reply = await http.post(path, json=ask)
        assert reply.status_code == 200, reply.text
        if path != "/api/chat" and stream:
            assert stream_usage_chunks(reply.text) == []  # asked by the gateway, not shown
        if path == "/api/chat" and stream:
            last = orjson.loads(reply.text.strip().splitlines()[-1])
            assert (last["prompt_eval_count"], last["eval_count"]) == (
                direct["prompt_tokens"],
                direct["completion_tokens"],
            )
        await settle(gateway)
        (row,) = (await usage_report(http, model="tiny"))["data"]
    assert row["estimated_requests"] == 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        direct["prompt_tokens"],
        direct["completion_tokens"],
    )
    assert row["completion_tokens"] == MAX_TOKENS
