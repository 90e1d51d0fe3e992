"""The client commands (`llm-gateway workers|models|keys|chat|status|config`) on real gateways.

Most tests call the CLI's `main(argv)` in a thread (it is synchronous; the gateway serves on
this test's event loop) and read what it printed; a few run the installed entry point as a
separate process, as a user or a script would.
"""

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from gateway.cli import main
from gateway.settings import load_settings
from registry import EmbeddedRedis
from tests.conftest import Gateway, GatewayFactory, ProtocolWorkerFactory, WorkerFactory
from tests.gateway.test_seed_api import seed_registration

ADMIN = "admin-token-0123456789"


class Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    async def run(*argv: str) -> Ran:
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


async def test_workers_add_ls_show_rm(
    cli: Any, gateway: Gateway, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    worker = await make_protocol_worker("openai")
    url = ["--url", gateway.url]
    added = await cli(
        "workers", "add", "qwen", worker.base_url, "--preset", "openai",
        "--upstream-model", "Qwen/Qwen3-4B", "--header", "Authorization=Bearer sk-hidden", *url,
    )  # fmt: skip
    assert added.code == 0, added.err
    assert "register LLM qwen succeed!" in added.out

    listed = await cli("workers", "ls", *url)
    assert listed.code == 0
    header, row = listed.out.splitlines()
    assert header.split() == ["MODEL", "STATE", "URL", "IN-FLIGHT", "OK", "FAILED", "FROM", "ID"]
    assert row.split()[0] == "qwen" and worker.base_url in row and " api " in row
    [record] = (await cli("workers", "ls", "--json", *url)).json()
    assert record["upstream_model"] == "Qwen/Qwen3-4B"

    shown = await cli("workers", "show", record["id"], *url)
    assert shown.code == 0
    assert "upstream_model:" in shown.out and '{"Authorization": "***"}' in shown.out
    assert "sk-hidden" not in shown.out + listed.out

    removed = await cli("workers", "rm", "qwen", worker.base_url, *url)
    assert removed.code == 0 and "remove llm worker" in removed.out
    assert (await cli("workers", "ls", *url)).out.strip() == "no workers registered"
    again = await cli("workers", "rm", record["id"], *url)
    assert again.code == 1 and "no worker with id" in again.err


async def test_workers_add_from_a_file_expands_env_references(
    cli: Any,
    gateway: Gateway,
    make_worker: WorkerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = await make_worker(name="filed")
    body = seed_registration("custom", worker, header={"X-Key": "${CUSTOM_KEY}"})
    source = tmp_path / "worker.json"
    source.write_text(json.dumps(body))
    monkeypatch.setenv("CUSTOM_KEY", "from-env")
    added = await cli(
        "workers", "add", "--from", str(source), "--weight", "3", "--url", gateway.url
    )
    assert added.code == 0, added.err
    async with gateway.client() as http:
        await http.post("/api/v1/chat/completions", json={"input": "x", "model_name": "custom"})
        [listed] = (await http.get("/api/server/workers")).json()["data"]
    assert worker.received[0].headers["X-Key"] == "from-env"
    assert listed["weight"] == 3

    monkeypatch.delenv("CUSTOM_KEY")
    missing = await cli("workers", "add", "--from", str(source), "--url", gateway.url)
    assert missing.code == 2 and "CUSTOM_KEY is not set" in missing.err


async def test_invalid_registration_exits_1_with_the_gateways_message(
    cli: Any, gateway: Gateway
) -> None:
    ran = await cli(
        "workers", "add", "m", "http://127.0.0.1:9/x", "--body", '{"a": "{USER_PROMPT}"}',
        "--weight", "0", "--url", gateway.url,
    )  # fmt: skip
    assert ran.code == 1
    assert "422" in ran.err and "weight" in ran.err


async def test_usage_errors_exit_2(cli: Any, gateway: Gateway) -> None:
    missing = await cli("workers", "add", "--preset", "openai", "--url", gateway.url)
    assert missing.code == 2 and "model_name is missing" in missing.err
    bad_json = await cli("workers", "add", "m", "http://h/x", "--body", "{", "--url", gateway.url)
    assert bad_json.code == 2 and "--body is not JSON" in bad_json.err
    with pytest.raises(SystemExit) as caught:
        await cli("workers", "frobnicate")
    assert caught.value.code == 2


async def test_unreachable_gateway_exits_3(cli: Any) -> None:
    ran = await cli("workers", "ls", "--url", "http://127.0.0.1:9")
    assert ran.code == 3
    assert "cannot reach the gateway at http://127.0.0.1:9" in ran.err


async def test_models_ls_counts_workers_per_model(
    cli: Any, gateway: Gateway, make_worker: WorkerFactory
) -> None:
    first, second = await make_worker(), await make_worker()
    async with gateway.client() as http:
        for model, worker in (("alpha", first), ("alpha", second), ("beta", first)):
            body = seed_registration(model, worker)
            assert (await http.post("/api/server/register", json=body)).status_code == 200
    ran = await cli("models", "ls", "--json", "--url", gateway.url)
    assert [(m["model"], m["workers"]) for m in ran.json()] == [("alpha", 2), ("beta", 1)]
    table = (await cli("models", "ls", "--url", gateway.url)).out.splitlines()
    assert table[0].split() == ["MODEL", "WORKERS", "AVAILABLE", "DOWN", "IN-FLIGHT"]
    assert table[1].split()[:2] == ["alpha", "2"]


async def test_keys_and_chat_on_a_closed_gateway(
    cli: Any,
    make_gateway: GatewayFactory,
    make_protocol_worker: ProtocolWorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = await make_gateway(admin_token=ADMIN, require_api_keys=True)
    worker = await make_protocol_worker("openai", name="llama")
    monkeypatch.setenv("GATEWAY_URL", gateway.url)

    denied = await cli("keys", "ls")
    assert denied.code == 4 and "GATEWAY_ADMIN_TOKEN" in denied.err
    wrong = await cli("keys", "ls", "--token", "not-the-token-at-all")
    assert wrong.code == 4

    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN)
    add = ["workers", "add", "llama", worker.base_url, "--preset", "openai"]
    assert (await cli(*add)).code == 0
    created = await cli("keys", "create", "team-a", "--rpm", "100", "--tpd", "5000")
    assert created.code == 0, created.err
    key = created.out.strip()
    assert key.startswith("gwk-") and "shown this once" in created.err
    [listed] = (await cli("keys", "ls", "--json")).json()
    assert (listed["name"], listed["requests_per_minute"]) == ("team-a", 100)
    assert (listed["tokens_per_day"], listed["spend"]["tokens_today"]) == (5000, 0)
    assert key not in (await cli("keys", "ls")).out

    no_key = await cli("chat", "llama", "hello")
    assert no_key.code == 4 and "GATEWAY_API_KEY" in no_key.err
    monkeypatch.setenv("GATEWAY_API_KEY", key)
    answered = await cli("chat", "llama", "hello there")
    assert answered.code == 0, answered.err
    assert answered.out == "llama says hello there\n"
    whole = await cli("chat", "llama", "hi", "--json")
    assert whole.json()["choices"][0]["message"]["content"] == "llama says hi"

    revoked = await cli("keys", "revoke", listed["id"])
    assert revoked.code == 0 and listed["id"] in revoked.out
    after = await cli("chat", "llama", "hello")
    assert after.code == 4
    unknown = await cli("keys", "revoke", listed["id"])
    assert unknown.code == 1 and "404" in unknown.err


async def test_chat_to_an_unknown_model_names_the_known_ones(
    cli: Any, gateway: Gateway, make_worker: WorkerFactory
) -> None:
    worker = await make_worker()
    async with gateway.client() as http:
        await http.post("/api/server/register", json=seed_registration("proxyllm", worker))
    ran = await cli("chat", "proxyllm2", "hi", "--url", gateway.url)
    assert ran.code == 1
    assert "404" in ran.err and "did you mean 'proxyllm'?" in ran.err


async def test_chat_reports_an_answer_that_breaks_off(
    cli: Any, gateway: Gateway, make_protocol_worker: ProtocolWorkerFactory
) -> None:
    worker = await make_protocol_worker("openai", name="dying", die_after=2)
    ran = await cli(
        "workers", "add", "dying", worker.base_url, "--preset", "openai", "--url", gateway.url
    )
    assert ran.code == 0
    broken = await cli("chat", "dying", "tell me more", "--url", gateway.url)
    assert broken.code == 1
    assert broken.out.startswith("dying")
    assert "broke off" in broken.err


@pytest.fixture
async def gated_worker() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An OpenAI-compatible worker that streams one piece, then waits for the event."""
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for text in ("first piece", " and the rest"):
            chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await release.wait()
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", release
    release.set()
    await runner.cleanup()


async def run_entry_point(*argv: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**environ, **env},
    )  # fmt: skip


async def test_chat_prints_each_piece_as_it_arrives(
    gateway: Gateway, gated_worker: tuple[str, asyncio.Event]
) -> None:
    url, release = gated_worker
    async with gateway.client() as http:
        body = {"model_name": "gated", "preset": "openai", "req_url_template": url}
        assert (await http.post("/api/server/register", json=body)).status_code == 200
    process = await run_entry_point("chat", "gated", "go", env={"GATEWAY_URL": gateway.url})
    assert process.stdout is not None
    # The first piece is on the terminal while the worker still holds the rest back.
    first = await process.stdout.readexactly(len("first piece"))
    assert first == b"first piece"
    release.set()
    rest, err = await process.communicate()
    assert process.returncode == 0, err
    assert rest == b" and the rest\n"


async def test_status_summarises_health_and_exit_codes(
    cli: Any, make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(eject_after_failures=1)
    live = await make_worker(name="live")
    async with gateway.client() as http:
        for url in (f"{live.url}/api/generate", "http://127.0.0.1:9/api/generate"):
            body = {**seed_registration("pair", live), "req_url_template": url}
            assert (await http.post("/api/server/register", json=body)).status_code == 200
        for _ in range(2):  # one of the two goes to the dead worker, fails over and ejects it
            reply = await http.post(
                "/api/v1/chat/completions", json={"input": "x", "model_name": "pair"}
            )
            assert reply.status_code == 200

    ran = await cli("status", "--url", gateway.url)
    assert ran.code == 0, ran.err
    assert "ready:" in ran.out and "yes (registry version" in ran.out
    assert "workers: 2 (1 down or ejected)" in ran.out.replace("  ", " ")
    trouble = [line for line in ran.out.splitlines() if "127.0.0.1:9" in line]
    assert len(trouble) == 1 and "ejected" in trouble[0]
    assert "1 worker(s) down or ejected" in ran.err
    report = (await cli("status", "--json", "--url", gateway.url)).json()
    assert report["workers"] == {"total": 2, "down": 1}
    assert [w["req_url_template"] for w in report["down"]] == ["http://127.0.0.1:9/api/generate"]


async def test_status_of_a_gateway_that_lost_redis_exits_1_with_the_reason(
    cli: Any, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "own-redis", persist=False)
    server.start()
    try:
        gateway = await make_gateway(redis_url=server.url)
        server.stop()
        async with gateway.client() as http:
            for _ in range(200):
                if (await http.get("/readyz")).status_code == 503:
                    break
                await asyncio.sleep(0.05)
        ran = await cli("status", "--url", gateway.url)
        assert ran.code == 1
        assert "ready:" in ran.out and "no: registry store unreachable" in ran.out
    finally:
        server.stop()


async def test_status_without_the_admin_token_shows_readiness_and_exits_4(
    cli: Any, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(admin_token=ADMIN)
    ran = await cli("status", "--url", gateway.url)
    assert ran.code == 4
    assert "yes (registry version" in ran.out and "GATEWAY_ADMIN_TOKEN" in ran.err


async def test_file_workers_cannot_be_removed_from_the_cli(
    cli: Any, make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    worker = await make_worker()
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[[workers]]\nmodel_name = "filed"\nreq_url_template = "{worker.url}/api/generate"\n'
        'body = { input = "{USER_PROMPT}" }\n'
    )
    settings = load_settings(config_file=path, environ={})
    gateway = await make_gateway(config_file=settings.config_file, workers=settings.workers)
    listed = await cli("workers", "ls", "--url", gateway.url)
    assert " file " in listed.out
    ran = await cli("workers", "rm", "filed", f"{worker.url}/api/generate", "--url", gateway.url)
    assert ran.code == 1
    assert "409" in ran.err and f"declared in the config file {path}" in ran.err


async def test_config_check(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        'port = 9000\n[[workers]]\nmodel_name = "gpt"\npreset = "openai"\n'
        'req_url_template = "https://api.openai.com/v1"\n'
        'header = { Authorization = "Bearer ${OPENAI_API_KEY}" }\n'
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    ran = await cli("config", "check", str(good))
    assert ran.code == 0, ran.err
    assert "valid; 1 worker(s) declared" in ran.out and "gpt" in ran.out
    assert "sk-test" not in ran.out

    monkeypatch.delenv("OPENAI_API_KEY")
    bad = await cli("config", "check", str(good))
    assert bad.code == 1
    assert "workers[0] (model_name 'gpt')" in bad.err and "OPENAI_API_KEY is not set" in bad.err

    settings = tmp_path / "settings.toml"
    settings.write_text("port = 'eighty'\nmax_tries = 0\n")
    report = await cli("config", "check", "--json", str(settings))
    assert report.code == 1
    assert {p.split(":")[0] for p in report.json()["problems"]} == {"port", "max_tries"}

    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    assert (await cli("config", "check", str(broken))).code == 1
    missing = await cli("config", "check", str(tmp_path / "absent.toml"))
    assert missing.code == 2 and "cannot read" in missing.err


async def test_entry_point_prints_json_for_scripts(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        body = {"model_name": "s", "preset": "openai", "req_url_template": "http://127.0.0.1:9/v1"}
        assert (await http.post("/api/server/register", json=body)).status_code == 200
    process = await run_entry_point("workers", "ls", "--json", env={"GATEWAY_URL": gateway.url})
    out, err = await process.communicate()
    assert process.returncode == 0, err
    assert [w["model_name"] for w in json.loads(out)] == ["s"]
    down = await run_entry_point("status", env={"GATEWAY_URL": "http://127.0.0.1:9"})
    await down.communicate()
    assert down.returncode == 3


async def test_chat_streams_from_the_llama_cpp_worker(
    cli: Any, gateway: Gateway, llama_server: Any
) -> None:
    async with gateway.client() as http:
        body = {
            "model_name": "tiny",
            "preset": "openai",
            "req_url_template": llama_server.openai_url,
        }
        assert (await http.post("/api/server/register", json=body)).status_code == 200
        direct = await http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hello"}]},
        )
    answered = await cli("chat", "tiny", "hello", "--url", gateway.url)
    assert answered.code == 0, answered.err
    text = answered.out.strip()
    assert text and set(text) <= set("abcdefghijklmnopqrstuvwxyz ")  # the tiny model's alphabet
    assert direct.status_code == 200
