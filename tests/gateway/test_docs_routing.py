"""docs/routing.md's examples work as written: its config file and its admin API calls."""

import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx

from gateway.settings import load_settings
from tests.conftest import GatewayFactory

DOC = Path(__file__).resolve().parents[2] / "docs" / "routing.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def curl_calls() -> list[tuple[str, str, Any]]:
    """Every curl command of the doc's sh blocks, as (method, path, JSON body or None)."""
    calls = []
    for block in blocks("sh"):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if not words or words[0] != "curl":
                continue
            method, body, url = "GET", None, ""
            rest = iter(words[1:])
            for word in rest:
                if word == "-X":
                    method = next(rest)
                elif word == "-H":
                    next(rest)
                elif word == "-d":
                    body = json.loads(next(rest))
                else:
                    url = word
            calls.append((method, url.split("/", 1)[1], body))
    return calls


def test_the_config_file_example_loads(tmp_path: Path) -> None:
    (example,) = blocks("toml")
    path = tmp_path / "gateway.toml"
    path.write_text(example, encoding="utf-8")
    settings = load_settings(config_file=path, environ={})
    assert settings.balancing == "least_load"
    models = settings.models
    assert models["llama-70b"].balancing == "prefix"
    assert models["llama-70b"].fallbacks == ["llama-8b"]
    assert models["qwen-32b"].resume_streams is True
    alias = models["chat"].alias or []
    assert [(t.model, t.weight) for t in alias] == [("chat-v1", 90), ("chat-v2", 10)]


async def test_the_admin_api_examples_answer_as_the_doc_says(make_gateway: GatewayFactory) -> None:
    calls = curl_calls()
    assert len(calls) >= 5, calls  # the model settings calls and the resume one
    gateway = await make_gateway()
    async with gateway.client() as http:
        for method, path, body in calls:
            reply: httpx.Response = await http.request(method, "/" + path, json=body)
            assert reply.status_code == 200, (method, path, reply.text)
            if method == "PUT":
                got = (await http.get("/" + path)).json()["data"]
                assert got["source"] == "api"
                for field, value in body.items():
                    assert got["settings"][field] == value, (path, field)
