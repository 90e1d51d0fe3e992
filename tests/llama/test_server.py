"""The llama-server fixtures keep their promises: the model, the two endings, the skip."""

from pathlib import Path

import httpx
import pytest

from tests.llama import server
from tests.llama.make_tiny_gguf import write_model
from tests.llama.server import LlamaServer, is_tiny_text


def test_the_model_is_small_and_the_same_bytes_every_time(tmp_path: Path) -> None:
    first = write_model(tmp_path / "a.gguf").read_bytes()
    assert write_model(tmp_path / "b.gguf").read_bytes() == first
    assert write_model(tmp_path / "c.gguf", eos_after="m").read_bytes() != first
    assert len(first) < 1_000_000


async def test_each_server_ends_its_answers_as_its_name_says(
    llama_server: LlamaServer, llama_server_eos: LlamaServer
) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        endless = (await http.post(f"{llama_server.openai_url}/chat/completions", json=body)).json()
        ending = await http.post(f"{llama_server_eos.openai_url}/chat/completions", json=body)
        metrics = await http.get(f"{llama_server.base_url}/metrics")
    assert endless["choices"][0]["finish_reason"] == "length"
    assert endless["usage"]["completion_tokens"] == 16
    assert is_tiny_text(endless["choices"][0]["message"]["content"])
    assert ending.json()["choices"][0]["finish_reason"] == "stop"
    assert ending.json()["usage"]["completion_tokens"] < 16
    assert metrics.status_code == 200 and "llamacpp:" in metrics.text


def test_a_missing_server_skips_with_the_build_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_LLAMA_SERVER", str(tmp_path / "no-such-llama-server"))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GATEWAY_REQUIRE_LLAMA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make llama-server"):
        server.require_binary()
    monkeypatch.setenv("GATEWAY_REQUIRE_LLAMA", "1")
    with pytest.raises(pytest.fail.Exception, match="make llama-server"):
        server.require_binary()
