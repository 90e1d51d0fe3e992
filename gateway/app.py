"""Build the aiohttp application: one cleanup context per resource, typed state keys."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import error_middleware
from gateway.router import Router
from gateway.routes import admin, ollama, openai, probes, seed
from gateway.settings import Settings
from gateway.state import FOLLOWER, REDIS, ROUTER, SESSION, SETTINGS, STORE, UPSTREAM
from gateway.upstream import Upstream
from registry import EmbeddedRedis, Follower, RegistryStore

log = logging.getLogger(__name__)

_REDIS_URL = web.AppKey("redis_url", str)


def create_app(settings: Settings) -> web.Application:
    """Return the gateway application for `settings`; resources start with the app."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.max_request_bytes
    )
    app[SETTINGS] = settings
    app[ROUTER] = Router()
    app.cleanup_ctx.extend([_redis_server, _redis_client, _upstream, _follower])
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
    redis = Redis.from_url(
        app[_REDIS_URL],
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=10.0,
        health_check_interval=15,
        retry_on_timeout=False,
    )
    app[REDIS] = redis
    app[STORE] = RegistryStore(redis, settings.key_prefix)
    for attempt in range(3):
        try:
            await redis.ping()
            break
        except (RedisError, OSError) as exc:
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
        session, max_tries=settings.max_tries, max_response_bytes=settings.max_response_bytes
    )
    try:
        yield
    finally:
        await session.close()


async def _follower(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    follower = Follower(
        app[STORE], app[ROUTER], check_interval_s=settings.registry_check_interval_s
    )
    app[FOLLOWER] = follower
    task = asyncio.create_task(follower.run(), name="registry-follower")
    # Wait briefly for the first snapshot so a fresh process can route at once.
    for _ in range(100):
        if app[ROUTER].loaded or task.done():
            break
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _safe(url: str) -> str:
    """Hide a password in a Redis URL before logging it."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
