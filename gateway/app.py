"""Build the aiohttp application: one cleanup context per resource, typed state keys."""

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypedDict

import aiohttp
from aiohttp import web

from gateway import openapi
from gateway.accounting import ACCOUNTANT, accounting
from gateway.allowlist import AllowList
from gateway.attempt import Limits
from gateway.auth import GUARD, Guard, access_middleware
from gateway.browser import browser_guard
from gateway.declared import Declared
from gateway.endpoints import Catalogue
from gateway.errors import error_middleware
from gateway.failover import Failover
from gateway.fallback import Dispatcher
from gateway.health import HealthChecker, reap_expired
from gateway.http1 import Client
from gateway.live import Live
from gateway.metrics import Metrics
from gateway.observe import add_request_id, observe_middleware
from gateway.router import Router
from gateway.routes import (
    admin,
    anthropic,
    assistants,
    dashboard,
    keys,
    meta,
    models,
    ollama,
    openai,
    probes,
    responses,
    runs,
    seed,
    ui,
    usage,
)
from gateway.runs import Runner
from gateway.settings import Settings
from gateway.state import (
    ALLOWLIST,
    API_KEYS,
    ASSISTANTS,
    CATALOGUE,
    DISPATCHER,
    FAILOVER,
    FOLLOWER,
    HEALTH,
    LIVE,
    METRICS,
    REDIS,
    RESPONSES,
    ROUTER,
    RUNS,
    SESSION,
    SETTINGS,
    STORE,
    UPSTREAM,
)
from gateway.tracing import TRACING, start_tracing
from gateway.worker import Ejection
from registry import (
    REDIS_ERRORS,
    ApiKeyStore,
    AssistantLimits,
    AssistantStore,
    EmbeddedRedis,
    Follower,
    RegistryStore,
    connect,
    pause,
)
from registry.responses import ResponseStore

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

_REDIS_URL = web.AppKey("redis_url", str)
# The embedded Redis this process runs, when no URL is configured.
EMBEDDED_REDIS = web.AppKey("embedded_redis", EmbeddedRedis)
# How often the embedded Redis is checked for having exited.
_EMBEDDED_WATCH_S = 0.5


def create_app(
    settings: Settings, *, tracer_provider: "TracerProvider | None" = None
) -> web.Application:
    """Return the gateway application for `settings`; resources start with the app.

    `tracer_provider`: an OpenTelemetry provider to make spans with (otherwise one is made
    when `otel_enabled`). Raises MetricsConfigError when multiprocess metrics are set up
    wrongly, RuntimeError when tracing is on without the SDK.
    """
    tracing = start_tracing(settings, tracer_provider)
    # Outermost first: observe sees every answer (errors rendered by error_middleware, which
    # also renders the 403/415 of the browser guard and the 401/403/429 of access_middleware).
    # The browser guard comes before access control: a page's request is refused before it
    # costs a key lookup or a rate-limit slot, and whatever the credentials.
    # Traced requests: the span sees the answer as error_middleware rendered it.
    traced = [tracing.middleware()] if tracing is not None else []
    app = web.Application(
        middlewares=[
            observe_middleware,
            *traced,
            error_middleware,
            browser_guard(settings),
            access_middleware,
        ],
        client_max_size=settings.max_request_bytes,
    )
    app[SETTINGS] = settings
    if tracing is not None:
        app[TRACING] = tracing
        app.on_cleanup.append(_stop_tracing)
    router = app[ROUTER] = Router(
        settings.balancing, settings.max_queued_per_model, models=settings.models
    )
    metrics = app[METRICS] = Metrics(multiproc_dir=settings.metrics_multiproc_dir)
    metrics.watch_registry(lambda: _registry_size(router))
    metrics.watch_workers(lambda: _worker_health(router))
    metrics.watch_load(lambda: _worker_load(router))
    router.on_removed = metrics.forget_worker
    app[ALLOWLIST] = AllowList.parse(settings.worker_allowlist)
    app[LIVE] = Live()  # the dashboard's figures
    app[ui.UI] = ui.UiFiles.load()
    tables = [
        admin.routes,
        models.routes,
        keys.routes,
        usage.routes,
        seed.routes,
        openai.routes,
        anthropic.routes,
        responses.routes,
        ollama.routes,
        assistants.routes,
        runs.routes,
        probes.routes,
        meta.routes,
        dashboard.routes,
        ui.routes,
    ]
    for table in tables:
        app.add_routes(table)
    app[CATALOGUE] = Catalogue(tables)
    app[openapi.OPENAPI] = openapi.document(app[CATALOGUE], settings)
    app.on_response_prepare.append(add_request_id)
    app.cleanup_ctx.extend(
        [
            _metrics,
            _redis_server,
            _redis_client,
            accounting,
            _upstream,
            _assistants,
            _config_workers,
            _follower,
            _health_checker,
            _reaper,
        ]
    )
    return app


async def _stop_tracing(app: web.Application) -> None:
    await asyncio.to_thread(app[TRACING].shutdown)  # exports the spans still held


class ServerOptions(TypedDict):
    max_line_size: int
    max_field_size: int
    max_headers: int


def server_options(settings: Settings) -> ServerOptions:
    """Return the HTTP parser limits for aiohttp's server (`web.run_app`, `web.AppRunner`)."""
    return ServerOptions(
        max_line_size=settings.max_request_line_bytes,
        max_field_size=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )


def _worker_health(router: Router) -> Iterator[tuple[str, str, str]]:
    now = time.monotonic()
    for worker in router.workers():
        yield worker.record.model_name, worker.label, worker.stats.state(now)


def _worker_load(router: Router) -> Iterator[tuple[str, str, int]]:
    for worker in router.workers():
        yield worker.record.model_name, worker.label, worker.stats.in_flight


def _registry_size(router: Router) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for worker in router.workers():
        model = worker.record.model_name
        sizes[model] = sizes.get(model, 0) + 1
    return sizes


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    try:
        if metrics.multiprocess:  # another process's scrape reads this one's load from files
            async with _background("load-gauges", lambda stop: _sync_load(metrics, stop)):
                yield
        else:
            yield
    finally:
        metrics.close()


async def _sync_load(metrics: Metrics, stop: asyncio.Event) -> None:
    while not stop.is_set():
        metrics.sync_load()
        await pause(stop, 1.0)


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
    app[EMBEDDED_REDIS] = server
    app[METRICS].watch_embedded_redis(lambda: server.restarts)
    try:
        # Watched from this thread too: a restarted server must be tied to it as well.
        async with _background("embedded-redis", lambda stop: _watch_embedded(server, stop)):
            yield
    finally:
        await asyncio.to_thread(server.stop)


async def _watch_embedded(server: EmbeddedRedis, stop: asyncio.Event) -> None:
    # Restarting is logged by the server; the client reconnects and the follower resyncs.
    while not stop.is_set():
        await pause(stop, _EMBEDDED_WATCH_S)
        if not stop.is_set():
            server.watch()


async def _redis_client(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = connect(
        app[_REDIS_URL],
        connect_timeout_s=settings.redis_connect_timeout_s,
        max_connections=settings.redis_max_connections,
    )
    app[REDIS] = redis
    app[STORE] = RegistryStore(redis, settings.key_prefix)
    app[API_KEYS] = ApiKeyStore(redis, settings.key_prefix)
    app[RESPONSES] = ResponseStore(redis, settings.key_prefix, settings.responses_ttl_s)
    guard = app[GUARD] = Guard(settings, app[API_KEYS], app[METRICS])
    if guard.open:
        log.warning("%s", guard.describe())
    else:
        log.info("%s", guard.describe())
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
    # Worker calls go through the lean client of gateway/http1/; health probes (a GET now
    # and then) through an aiohttp session.
    client = Client(
        limit=settings.upstream_max_connections,
        limit_per_host=settings.upstream_max_connections_per_worker,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        max_header_bytes=settings.max_response_header_bytes,
        max_headers=settings.max_response_headers,
        max_body_bytes=settings.max_response_bytes,
    )
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.upstream_connect_timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    )
    app[SESSION] = session
    app[UPSTREAM] = client
    failover = app[FAILOVER] = Failover(
        client,
        limits=Limits(
            max_response_bytes=settings.max_response_bytes,
            max_stream_line_bytes=settings.max_stream_line_bytes,
            stream_timeout_s=settings.stream_timeout_s,
            extract_timeout_s=settings.extract_timeout_s,
        ),
        max_tries=settings.max_tries,
        request_timeout_s=settings.request_timeout_s,
        metrics=app[METRICS],
        ejection=Ejection(
            settings.eject_after_failures, settings.ejection_base_s, settings.ejection_max_s
        ),
        queue_timeout_s=settings.queue_timeout_s,
        panic=settings.panic_mode,
    )
    app[DISPATCHER] = Dispatcher(app[ROUTER], failover)
    try:
        yield
    finally:
        await client.close()
        await session.close()


async def _assistants(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    limits = AssistantLimits(
        ttl_s=settings.assistants_ttl_s,
        max_assistants=settings.assistants_max_per_key,
        max_messages=settings.assistants_max_messages,
        max_message_bytes=settings.assistants_max_message_bytes,
        max_thread_bytes=settings.assistants_max_thread_bytes,
    )
    store = app[ASSISTANTS] = AssistantStore(app[REDIS], settings.key_prefix, limits)
    runner = app[RUNS] = Runner(
        store,
        app[DISPATCHER],
        app[ACCOUNTANT],
        app[GUARD],
        request_timeout_s=settings.request_timeout_s,
    )
    try:
        yield
    finally:
        await runner.close()  # before the Redis client closes: each run stores how it ended


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


async def _config_workers(app: web.Application) -> AsyncIterator[None]:
    # Before the follower: its first snapshot then holds the file's workers.
    settings = app[SETTINGS]
    if settings.config_file is None:
        yield
        return
    file = Declared(
        app[STORE], str(settings.config_file), settings.workers, app[ROUTER].apply_local
    )
    if await file.apply():
        yield
        return
    async with _background("config-workers", file.retry):
        yield


async def _follower(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    follower = Follower(
        app[STORE],
        app[ROUTER],
        check_interval_s=settings.registry_check_interval_s,
        on_error=lambda _exc: metrics.redis_error("follower"),
    )
    app[FOLLOWER] = follower
    async with _background("registry-follower", follower.run):
        # Wait briefly for the first snapshot so a fresh process can route at once.
        for _ in range(100):
            if app[ROUTER].loaded:
                break
            await asyncio.sleep(0.02)
        # What exists now (the app, the first view, imported modules) lives as long as the
        # process: keep the cyclic collector from walking it on every full collection (with
        # 10,000 workers that walk alone was ~150 ms, a p99 spike). Once, not per resync:
        # each freeze moves everything alive into the permanent generation for good.
        gc.freeze()
        yield


async def _health_checker(app: web.Application) -> AsyncIterator[None]:
    checker = HealthChecker(app[STORE], app[ROUTER], app[SESSION], app[SETTINGS], app[UPSTREAM])
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
