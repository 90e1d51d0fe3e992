"""Health probes go where health_url says and no further, and never read a body."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_health import FAST_HEALTH, until
from tests.gateway.test_seed_api import register, seed_registration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve one handler on every path of a real server on port 0; return its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def probe_of(client: httpx.AsyncClient) -> dict[str, str]:
    listing = (await client.get("/api/server/workers", params={"model_name": "m"})).json()
    (entry,) = listing["data"]
    health: dict[str, str] = entry["health"]
    return health


@pytest.mark.parametrize("status", [302, 307])
async def test_a_probe_never_follows_a_redirect(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, serve: Serve, status: int
) -> None:
    target = await make_worker(name="elsewhere")  # any host the redirect could point at

    async def redirect(_request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": f"{target.url}/health"})

    redirector = await serve(redirect)
    worker = await make_worker(name="w")
    gateway = await make_gateway(**FAST_HEALTH)
    async with gateway.client() as client:
        registration = seed_registration("m", worker, health_url=f"{redirector}/health")
        assert (await register(client, registration)).status_code == 200

        async def down() -> bool:
            return (await probe_of(client))["probe"] == "down"

        await until(down, timeout_s=10)
        reason = (await probe_of(client))["probe_reason"]
        assert reason == (
            f"health_url answered a redirect (HTTP {status}); point health_url at the final URL"
        )
    assert target.count == 0  # the redirect's target was never asked


async def test_a_probe_does_not_read_the_body(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, serve: Serve
) -> None:
    hung_up = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:  # a body that never ends: reading it would time the probe out
                await response.write(b"x" * 65536)
                await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            hung_up.set()
            raise

    health = await serve(endless)
    worker = await make_worker(name="w")
    gateway = await make_gateway(**FAST_HEALTH)
    async with gateway.client() as client:
        registration = seed_registration("m", worker, health_url=f"{health}/health")
        assert (await register(client, registration)).status_code == 200

        async def up() -> bool:
            return (await probe_of(client))["probe"] == "up"

        await until(up, timeout_s=10)
        # The gateway hung up on the body rather than reading it.
        await asyncio.wait_for(hung_up.wait(), timeout=10)
        assert (await probe_of(client))["probe"] == "up"
