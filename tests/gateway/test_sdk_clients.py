"""Clients people use, beyond the Python SDKs: the OpenAI Node SDK and LangChain.

The Node SDK's stream helper refuses a stream whose first delta has no role, and its
embeddings ask for base64 by default; LangChain reads usage into `usage_metadata`. Each is
driven here against a gateway whose workers speak another protocol (Ollama), so every answer
the client sees was translated.
"""

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import Gateway
from tests.model_server import ModelServer, answer_words

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
REQUIRED = os.environ.get("GATEWAY_REQUIRE_NODE") == "1"  # set by .ci/run: never skip there


@pytest.fixture
async def ollama_model(gateway: Gateway) -> AsyncIterator[ModelServer]:
    server = ModelServer(protocol="ollama", name="llama")
    await server.start()
    async with gateway.client() as client:
        body = {"model_name": "llama", "req_url_template": server.url, "preset": "ollama"}
        assert (await client.post("/api/server/register", json=body)).status_code == 200
    yield server
    await server.stop()


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "openai").is_dir():
        message = "the Node SDK is not installed: run `make install` (needs node and npm)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return node


async def test_the_node_sdk_streams_and_embeds_through_a_translated_worker(
    gateway: Gateway, ollama_model: ModelServer
) -> None:
    node = _node()
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / "sdk.mjs"),
        f"{gateway.url}/v1",
        "llama",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    seen = orjson.loads(out.splitlines()[-1])
    words = answer_words("llama", "tell me a story")
    assert seen["deltas"] == words[:3]
    assert seen["role"] == "assistant"
    assert seen["content"] == "".join(words[:3])
    assert seen["finish"] == "length"
    assert seen["vectors"] == [[2.0, 3.0], [3.0, 4.0]]  # base64 asked, floats decoded


async def test_langchain_reads_usage_and_streams_from_a_translated_worker(
    gateway: Gateway, ollama_model: ModelServer
) -> None:
    from langchain_openai import ChatOpenAI

    # Its own connection pool, closed with the test (LangChain would keep a cached one open).
    async with openai.DefaultAsyncHttpxClient() as http:
        chat = ChatOpenAI(
            base_url=f"{gateway.url}/v1",
            api_key="unused",
            model="llama",
            max_retries=0,
            http_async_client=http,
        )  # type: ignore[call-arg]
        reply = await chat.ainvoke("tell me a story")
        assert reply.content == "".join(answer_words("llama", "tell me a story"))
        usage: Any = reply.usage_metadata
        assert usage is not None
        assert (usage["input_tokens"], usage["output_tokens"]) == (4, 6)
        assert reply.response_metadata["finish_reason"] == "stop"

        streaming = ChatOpenAI(
            base_url=f"{gateway.url}/v1",
            api_key="unused",
            model="llama",
            max_retries=0,
            stream_usage=True,
            http_async_client=http,
        )  # type: ignore[call-arg]
        pieces = [piece async for piece in streaming.astream("tell me a story")]
        assert "".join(str(p.content) for p in pieces) == "".join(
            answer_words("llama", "tell me a story")
        )
    streamed_usage = [p.usage_metadata for p in pieces if p.usage_metadata]
    assert streamed_usage and streamed_usage[-1]["output_tokens"] == 6
