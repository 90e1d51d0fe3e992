"""Build the aiohttp application: one cleanup context per resource, typed state keys."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from gateway.errors import error_middleware
from gateway.health import HealthChecker, reap_expired
from gateway.router import Ejection, Router
from gateway.routes import admin, ollama, openai, probes, seed
from gateway.settings import Settings
from gateway.state import FOLLOWER, HEALTH, REDIS, ROUTER, SESSION, SETTINGS, STORE, UPSTREAM
from gateway.upstream import Upstream
from registry import REDIS_ERRORS, EmbeddedRedis, Follower, RegistryStore, connect

log = logging.getLogger(__name__)

_REDIS_URL = web.AppKey("redis_url", str)


def create_app(settings: Settings) -> web.Application:
    """Return the gateway application for `settings`; resources start with the app."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.max_request_bytes
    )
    app[SETTINGS] = settings
    app[ROUTER] = Router(settings.balancing, settings.max_queued_per_model)
    app.cleanup_ctx.extend(
        [_redis_server, _redis_client, _upstream, _follower, _health_checker, _reaper]
    )
    app.add_routes(admin.routes)
    app.add_routes(seed.routes)
    app.add_routes(openai.routes)
    app.add_routes(ollama.routes)
    app.add_routes(probes.routes)
    return app


async def _redis_server(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.redis_url:
        app[_REDIS_URL] = settings.redis_url
        yield
        return
    server = EmbeddedRedis(settings.data_dir)
    # Started from the loop's thread on purpose: the server is tied to the lifetime of the
    # thread that spawns it (PR_SET_PDEATHSIG), and this thread lives as long as the gateway.
    server.start()
    log.info(
        "no Redis URL configured: started embedded Redis (valkey) on %s, data in %s",
        server.url,
        settings.data_dir,
    )
    app[_REDIS_URL] = server.url
    try:
        yield
    finally:
        await asyncio.to_thread(server.stop)


async def _redis_client(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = connect(app[_REDIS_URL], connect_timeout_s=settings.redis_connect_timeout_s)
    app[REDIS] = redis
    app[STORE] = RegistryStore(redis, settings.key_prefix)
    for attempt in range(3):
        try:
            await redis.ping()
            break
        except REDIS_ERRORS as exc:
            # Start anyway: routing waits for the registry, /readyz says why, and the follower
            # keeps reconnecting in the background.
            log.warning("Redis at %s does not answer yet (%s)", _safe(app[_REDIS_URL]), exc)
            await asyncio.sleep(0.2 * (attempt + 1))
    try:
        yield
    finally:
        await redis.aclose()


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_max_connections,
        limit_per_host=settings.upstream_max_connections_per_worker,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.upstream_connect_timeout_s),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )
    app[SESSION] = session
    app[UPSTREAM] = Upstream(
        session,
        max_tries=settings.max_tries,
        max_response_bytes=settings.max_response_bytes,
        request_timeout_s=settings.request_timeout_s,
        ejection=Ejection(
            settings.eject_after_failures, settings.ejection_base_s, settings.ejection_max_s
        ),
        queue_timeout_s=settings.queue_timeout_s,
        panic=settings.panic_mode,
    )
    try:
        yield
    finally:
        await session.close()


@contextlib.asynccontextmanager
async def _background(
    name: str, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
) -> AsyncIterator[None]:
    """Run a loop as a task; stop it with its event and a cancel at shutdown.

    The event is what ends the loop for sure: a cancel that lands inside a Redis call can be
    absorbed by the client library, and the loop must still stop.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop), name=name)
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _follower(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    follower = Follower(
        app[STORE], app[ROUTER], check_interval_s=settings.registry_check_interval_s
    )
    app[FOLLOWER] = follower
    async with _background("registry-follower", follower.run):
        # Wait briefly for the first snapshot so a fresh process can route at once.
        for _ in range(100):
            if app[ROUTER].loaded:
                break
            await asyncio.sleep(0.02)
        yield


async def _health_checker(app: web.Application) -> AsyncIterator[None]:
    checker = HealthChecker(app[STORE], app[ROUTER], app[SESSION], app[SETTINGS])
    app[HEALTH] = checker
    async with _background("health-checker", checker.run):
        yield
    await checker.stop()


async def _reaper(app: web.Application) -> AsyncIterator[None]:
    store, interval_s = app[STORE], app[SETTINGS].reap_interval_s
    async with _background("heartbeat-reaper", lambda stop: reap_expired(store, interval_s, stop)):
        yield


def _safe(url: str) -> str:
    """Hide a password in a Redis URL before logging it."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
