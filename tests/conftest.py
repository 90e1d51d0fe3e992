"""Real parts for every test: a Redis-protocol server, fake workers and gateways on sockets.

A session-wide embedded Redis (the same valkey binary the gateway embeds) always runs; when
GATEWAY_TEST_REDIS_URL is set, every Redis-using test runs against that server as well. Each
test gets its own key prefix, removed afterwards, so tests never see each other's workers and
a shared Redis is left as it was found.
"""

import gc
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway import Settings, create_app
from gateway.app import server_options
from registry import EmbeddedRedis
from tests.llama.server import (  # noqa: F401 - fixtures
    llama_server,
    llama_server_eos,
    llama_story_pair,
)
from tests.workers import FakeWorker, ProtocolWorker

EXTERNAL_REDIS = os.environ.get("GATEWAY_TEST_REDIS_URL")


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collect garbage as each test's last teardown step, so a leak fails the test that leaked.

    An SDK client left unclosed (or a stream left open) sits in a reference cycle until a
    collection runs, which could be during any later test: its socket is reported unclosed,
    or its __del__ schedules aclose() on that test's loop while its connections belong to a
    closed one, and the unrelated test fails (filterwarnings = error). Collected here, the
    warning lands in the leaking test's teardown. It costs about 2 ms a test (1.5 s over
    the suite's ~730 tests).
    """
    yield
    gc.collect()


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(
    scope="session", params=["embedded", "external"] if EXTERNAL_REDIS else ["embedded"]
)
def redis_url(request: pytest.FixtureRequest, embedded_redis: EmbeddedRedis) -> str:
    if request.param == "external":
        assert EXTERNAL_REDIS is not None
        return EXTERNAL_REDIS
    return embedded_redis.url


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match="{" + key_prefix + "}:*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class Gateway:
    """A gateway application served on a real socket."""

    def __init__(self, app: web.Application, runner: web.AppRunner, url: str) -> None:
        self.app = app
        self.runner = runner
        self.url = url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30.0, **kwargs)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[GatewayFactory]:
    """Start gateways sharing the test's Redis and key prefix (like replicas)."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> Gateway:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "data_dir": tmp_path / "data",
            "registry_check_interval_s": 1.0,
        }
        provider = overrides.pop("tracer_provider", None)  # OpenTelemetry, for span tests
        values.update(overrides)
        settings = Settings(**values)
        app = create_app(settings, tracer_provider=provider)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, **server_options(settings)
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return Gateway(app, runner, f"http://127.0.0.1:{port}")

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as http:
        yield http


WorkerFactory = Callable[..., Awaitable[FakeWorker]]


@pytest.fixture
async def make_worker() -> AsyncIterator[WorkerFactory]:
    """Start fake workers (real aiohttp servers on port 0); stopped after the test."""
    workers: list[FakeWorker] = []

    async def start(**kwargs: Any) -> FakeWorker:
        worker = FakeWorker(**kwargs)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop()


ProtocolWorkerFactory = Callable[..., Awaitable[ProtocolWorker]]


@pytest.fixture
async def make_protocol_worker() -> AsyncIterator[ProtocolWorkerFactory]:
    """Start fake OpenAI-compatible or Ollama servers; stopped after the test."""
    workers: list[ProtocolWorker] = []

    async def start(protocol: str = "openai", **kwargs: Any) -> ProtocolWorker:
        worker = ProtocolWorker(protocol=protocol, **kwargs)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop()
