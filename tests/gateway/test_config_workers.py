"""Workers declared in the config file: applied at start, owned by the file, converging replicas."""

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from gateway.settings import WorkersError, load_settings
from gateway.supervisor import child_settings, read_child_settings
from registry import EmbeddedRedis
from registry.keys import Keys
from tests.conftest import Gateway, GatewayFactory, WorkerFactory
from tests.workers import FakeWorker

SEED_WORKER = """
[[workers]]
model_name = "{model}"
req_url_template = "{url}/api/generate"
response_extract = "data.items[].attributes.answer"
body = {{ input = "{{USER_PROMPT}}" }}
header = {{ Authorization = "Bearer ${{WORKER_KEY}}" }}
"""

MINIMAL = '[[workers]]\nmodel_name = "m"\nreq_url_template = "http://h/x"\npreset = "openai"\n'


def worker_table(model: str, worker: FakeWorker) -> str:
    return SEED_WORKER.format(model=model, url=worker.url)


def config(tmp_path: Path, *tables: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text("max_tries = 2\n" + "".join(tables))
    return path


async def start(
    make_gateway: GatewayFactory, path: Path, environ: Mapping[str, str] | None = None
) -> Gateway:
    settings = load_settings(config_file=path, environ=environ or {"WORKER_KEY": "s3cret"})
    return await make_gateway(config_file=settings.config_file, workers=settings.workers)


async def listing(gateway: Gateway) -> list[dict[str, Any]]:
    async with gateway.client() as http:
        data: list[dict[str, Any]] = (await http.get("/api/server/workers")).json()["data"]
        return data


@pytest.fixture
async def events(redis: Redis, key_prefix: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every registry change event published while the test runs."""
    seen: list[dict[str, Any]] = []
    pubsub = redis.pubsub()
    await pubsub.subscribe(Keys(key_prefix).events)

    async def read() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                seen.append(orjson.loads(message["data"]))

    task = asyncio.create_task(read())
    yield seen
    task.cancel()
    await pubsub.aclose()


async def test_file_workers_are_registered_at_start_with_secrets_from_the_environment(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    worker = await make_worker(name="filed")
    path = config(tmp_path, worker_table("from-file", worker))
    gateway = await start(make_gateway, path)

    [listed] = await listing(gateway)
    assert listed["model_name"] == "from-file"
    assert listed["managed_by"] == str(path)
    assert listed["header"] == {"Authorization": "***"}
    async with gateway.client() as http:
        reply = await http.post(
            "/api/v1/chat/completions", json={"input": "hi", "model_name": "from-file"}
        )
    assert reply.json()["result"] == "filed: hi"
    assert worker.received[0].headers["Authorization"] == "Bearer s3cret"


async def test_api_refuses_to_change_or_remove_a_file_worker_naming_the_file(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    worker = await make_worker()
    path = config(tmp_path, worker_table("pinned", worker))
    gateway = await start(make_gateway, path)
    identity = {"model_name": "pinned", "req_url_template": f"{worker.url}/api/generate"}
    async with gateway.client() as http:
        replace = await http.post(
            "/api/server/register",
            json={**identity, "body": {"prompt": "{USER_PROMPT}"}, "replace": True},
        )
        offline = await http.post("/api/server/offline", json=identity)
    for reply in (replace, offline):
        assert reply.status_code == 409, reply.text
        assert f"declared in the config file {path}" in reply.json()["msg"]
    [listed] = await listing(gateway)
    assert listed["body"] == {"input": "{USER_PROMPT}"}


async def test_restart_with_the_same_file_writes_nothing(
    make_gateway: GatewayFactory,
    make_worker: WorkerFactory,
    tmp_path: Path,
    events: list[dict[str, Any]],
) -> None:
    worker = await make_worker()
    path = config(tmp_path, worker_table("a", worker), worker_table("b", worker))
    first = await start(make_gateway, path)
    before = await listing(first)
    assert len([e for e in events if e["op"] == "put"]) == 2

    second = await start(make_gateway, path)
    assert await listing(second) == before  # registered_at included
    puts = [e for e in events if e["op"] in ("put", "del")]
    assert [e["record"]["model_name"] for e in puts] == ["a", "b"]


async def test_replicas_starting_at_once_write_each_worker_once(
    make_gateway: GatewayFactory,
    make_worker: WorkerFactory,
    tmp_path: Path,
    events: list[dict[str, Any]],
) -> None:
    worker = await make_worker()
    tables = [worker_table(f"m{i}", worker) for i in range(5)]
    path = config(tmp_path, *tables)
    gateways = await asyncio.gather(*(start(make_gateway, path) for _ in range(3)))

    views = [await listing(g) for g in gateways]
    assert [w["model_name"] for w in views[0]] == [f"m{i}" for i in range(5)]
    assert views[1] == views[0] and views[2] == views[0]
    writes = [e for e in events if e["op"] in ("put", "del")]
    assert sorted(e["record"]["model_name"] for e in writes) == [f"m{i}" for i in range(5)]


async def test_changed_file_updates_adds_and_removes_only_its_own_workers(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    worker = await make_worker()
    path = config(tmp_path, worker_table("kept", worker), worker_table("dropped", worker))
    other = config(tmp_path, worker_table("elsewhere", worker), name="other.toml")
    gateway = await start(make_gateway, path)
    await start(make_gateway, other)
    async with gateway.client() as http:
        by_api = {
            "model_name": "by-api",
            "req_url_template": f"{worker.url}/x",
            "body": {"input": "{USER_PROMPT}"},
        }
        assert (await http.post("/api/server/register", json=by_api)).status_code == 200
    kept_at = {w["model_name"]: w for w in await listing(gateway)}["kept"]["registered_at"]

    changed = worker_table("kept", worker).replace('"Bearer ', '"Token ')
    path.write_text(changed + worker_table("added", worker))
    restarted = await start(make_gateway, path, {"WORKER_KEY": "new"})

    listed = {w["model_name"]: w for w in await listing(restarted)}
    assert sorted(listed) == ["added", "by-api", "elsewhere", "kept"]
    assert listed["kept"]["registered_at"] == kept_at
    assert listed["by-api"]["managed_by"] is None
    assert listed["elsewhere"]["managed_by"] == str(other)
    async with restarted.client() as http:
        await http.post("/api/v1/chat/completions", json={"input": "x", "model_name": "kept"})
    assert worker.received[-1].headers["Authorization"] == "Token new"


async def test_file_takes_over_a_worker_registered_through_the_api(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    worker = await make_worker()
    gateway = await make_gateway()
    async with gateway.client() as http:
        body = {
            "model_name": "adopted",
            "req_url_template": f"{worker.url}/api/generate",
            "body": {"old": "{USER_PROMPT}"},
        }
        assert (await http.post("/api/server/register", json=body)).status_code == 200
    path = config(tmp_path, worker_table("adopted", worker))
    restarted = await start(make_gateway, path)
    [listed] = await listing(restarted)
    assert (listed["managed_by"], listed["body"]) == (str(path), {"input": "{USER_PROMPT}"})


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (
            MINIMAL + 'header = { Authorization = "Bearer ${NOT_SET_ANYWHERE}" }\n',
            ["workers[0] (model_name 'm')", "header.Authorization", "NOT_SET_ANYWHERE is not set"],
        ),
        (
            '[[workers]]\nmodel_name = "m"\n',
            ["workers[0] (model_name 'm')", "req_url_template: Field required"],
        ),
        (
            MINIMAL + "ttl_s = 5\n",
            ["ttl_s", "no heartbeat"],
        ),
        (
            MINIMAL + "replace = true\n",
            ["replace: Extra inputs are not permitted"],
        ),
        (
            MINIMAL + MINIMAL,
            ["workers[1]", "same model_name and req_url_template as workers[0]"],
        ),
        ('[workers]\nmodel_name = "m"\n', ["array of tables", "[[workers]]"]),
        (
            MINIMAL + "body = { when = 2024-01-01 }\n",
            ["body.when", "quote it"],
        ),
    ],
)
def test_invalid_file_workers_are_refused_naming_the_worker(
    tmp_path: Path, table: str, words: list[str]
) -> None:
    path = config(tmp_path, table)
    with pytest.raises(WorkersError) as caught:
        load_settings(config_file=path, environ={})
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_every_bad_worker_is_reported_at_once_without_secret_values(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '[[workers]]\nmodel_name = "a"\nreq_url_template = "http://h/x"\npreset = "openai"\n'
        'header = { "X-Key" = "${KEY}\\n" }\n',
        MINIMAL.replace('"m"', '"b"') + "weight = 0\n",
    )
    with pytest.raises(WorkersError) as caught:
        load_settings(config_file=path, environ={"KEY": "hunter2-secret"})
    assert len(caught.value.problems) == 2
    message = str(caught.value)
    assert "model_name 'a'" in message and "model_name 'b'" in message
    assert "hunter2" not in message


def test_a_doubled_dollar_keeps_a_literal_reference(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        MINIMAL + 'header = { "X-Note" = "$${dollar} and ${WHO}" }\n',
    )
    [spec] = load_settings(config_file=path, environ={"WHO": "me"}).workers
    assert spec.header == {"X-Note": "${dollar} and me"}


def test_file_workers_reach_the_processes_of_processes_n(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        MINIMAL + 'header = { Authorization = "Bearer ${KEY}" }\n',
    )
    settings = load_settings(config_file=path, environ={"KEY": "k-123"})
    child = read_child_settings(child_settings(settings))
    assert child.config_file == path
    assert child.workers == settings.workers
    assert child.workers[0].header == {"Authorization": "Bearer k-123"}
    assert "k-123" not in repr(settings)


async def test_file_is_applied_once_redis_answers_after_a_start_without_it(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    worker = await make_worker()
    server = EmbeddedRedis(tmp_path / "late-redis", persist=False)
    settings = load_settings(
        config_file=config(tmp_path, worker_table("late", worker)), environ={"WORKER_KEY": "k"}
    )
    gateway = await make_gateway(
        redis_url=server.url, config_file=settings.config_file, workers=settings.workers
    )
    try:
        server.start()
        async with gateway.client() as http:
            for _ in range(400):
                reply = await http.get("/api/server/workers")
                if reply.status_code == 200 and reply.json()["data"]:
                    break
                await asyncio.sleep(0.05)
            assert [w["model_name"] for w in reply.json()["data"]] == ["late"]
    finally:
        server.stop()
