"""The deployment files: the compose file names only what the project has, and the example
worker it runs really serves through the gateway."""

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.settings import Settings
from tests.conftest import Gateway
from tests.gateway.test_cli import free_port

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_names_only_what_exists() -> None:
    services = compose()["services"]
    assert {"redis", "gateway-1", "gateway-2", "nginx", "echo-a", "echo-b"} <= set(services)
    settings = set(Settings.model_fields)
    for name, service in services.items():
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name
        else:
            assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+", service["image"]), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for key in service.get("environment", {}):
            if key.startswith("GATEWAY_"):
                assert key.removeprefix("GATEWAY_").lower() in settings, f"{name}: {key}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        command = service.get("command", [])
        if command[:1] == ["python"]:
            assert (ROOT / command[1]).is_file(), f"{name} runs missing {command[1]}"


def test_nginx_balances_over_the_gateway_replicas_on_their_port() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    services = compose()["services"]
    port = Settings().port
    for name in ("gateway-1", "gateway-2"):
        assert f"server {name}:{port};" in conf
        assert name in services
    assert "proxy_buffering off;" in conf  # streams must not be held back
    published = services["nginx"]["ports"][0]
    assert published.split(":")[1] == re.search(r"listen (\d+);", conf).group(1)  # type: ignore[union-attr]


def test_dockerfile_copies_every_package_and_the_examples() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("gateway", "registry", "templates", "deploy", "pyproject.toml"):
        assert (ROOT / path).exists()
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.MULTILINE), path
    assert 'CMD ["llm-gateway", "serve"]' in dockerfile


@pytest.mark.slow
async def test_example_worker_serves_through_the_gateway(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "deploy" / "echo_worker.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--name",
        "echo-a",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                async with httpx.AsyncClient() as probe:
                    if (await probe.get(f"{base}/health")).status_code == 200:
                        break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        body = {"model_name": "echo", "preset": "openai", "req_url_template": f"{base}/v1"}
        assert (await client.post("/api/server/register", json=body)).status_code == 200
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x") as sdk:
            reply = await sdk.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content == "[echo-a] you said: hi"
            stream = await sdk.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "[echo-a] you said: hi"
    finally:
        process.terminate()
        await process.wait()
