"""Who may call what: the admin token, inference API keys and their rate limits.

`access_middleware` reads each route's access from the catalogue:

- admin routes (the registry, presets, API keys) need `Authorization: Bearer <admin_token>`
  when `admin_token` is set;
- inference routes need a live API key when `require_api_keys` is set; the key's limits are
  counted in Redis in one atomic step, and its concurrency slot is freed when the answer ends;
- `/metrics` needs `metrics_token` when it is set.

No credentials: 401 with `WWW-Authenticate: Bearer`; credentials that are not accepted: 403.
A route missing from the catalogue counts as an admin route (closed by default).

Keys are looked up by their SHA-256 and the answer (found or not) is cached in the process
for `api_key_cache_ttl_s`, so a revoked key stops working in every process within that time,
and at once in the process that revoked it. While Redis is unreachable an answer past its TTL
is kept for up to `api_key_cache_grace_s` more (inference goes on for the keys in use); a key
with no answer in the cache then gets 503. Each failed lookup is counted in
`gateway_redis_errors_total{component="api_key"}`. If Redis fails while counting a request
against its limits, the request is let through (the key itself was already verified) and the
failure is counted in `gateway_redis_errors_total{component="rate_limit"}`.
"""

import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from redis.exceptions import RedisError

from gateway.endpoints import Access, Handler
from gateway.errors import BudgetExceeded, Forbidden, RateLimited, Unauthorized
from gateway.errors import StoreUnavailable as KeysUnavailable
from gateway.metrics import Metrics
from gateway.observe import TRACE, Trace
from gateway.settings import Settings
from gateway.state import CATALOGUE
from registry import ApiKey, ApiKeyStore, StoreUnavailable, hash_key

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="llm-gateway"'}


# While Redis is down, say so in the log at most this often, not on every request.
_STALE_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class _Cached:
    key: ApiKey | None
    looked_up_at: float  # when Redis last gave this answer
    ask_at: float  # when to ask Redis again


class KeyCache:
    """API keys by hash, cached for a few seconds in a bounded dict.

    While Redis cannot be asked, an answer past its TTL stays in use for `grace_s` after it
    was last given. After a failed lookup Redis is not asked again for a TTL, so requests
    with cached keys do not each wait for it to fail.
    """

    def __init__(
        self,
        store: ApiKeyStore,
        *,
        ttl_s: float,
        max_entries: int,
        grace_s: float = 0.0,
        on_store_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._grace_s = grace_s
        self._max_entries = max_entries
        self._on_store_error = on_store_error
        self._entries: dict[str, _Cached] = {}
        self._store_down_until = 0.0
        self._stale_logged_at = -_STALE_LOG_EVERY_S

    async def find(self, secret: str) -> ApiKey | None:
        """Return the live key whose secret is `secret`, or None.

        Raises StoreUnavailable when Redis cannot be asked and no answer may stand in.
        """
        sha = hash_key(secret)
        now = time.monotonic()
        cached = self._entries.get(sha)
        if cached is not None and cached.ask_at > now:
            return cached.key
        stale = cached if cached is not None and now < self._usable_until(cached) else None
        if stale is not None and now < self._store_down_until:
            return self._serve_stale(sha, stale, now)
        try:
            key = await self._store.lookup(sha)
        except StoreUnavailable as exc:
            self._on_store_error()
            self._store_down_until = now + self._ttl_s
            if stale is None:
                raise
            if now - self._stale_logged_at >= _STALE_LOG_EVERY_S:
                self._stale_logged_at = now
                log.warning(
                    "Redis is unreachable (%s): API keys are checked against answers cached "
                    "up to %.0fs ago, for at most %.0fs",
                    exc.__cause__ or exc,
                    now - stale.looked_up_at,
                    self._ttl_s + self._grace_s,
                )
            return self._serve_stale(sha, stale, now)
        if self._ttl_s > 0:
            self._entries.pop(sha, None)
            while len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest entry
            self._entries[sha] = _Cached(key, now, now + self._ttl_s)
        return key

    def _usable_until(self, cached: _Cached) -> float:
        return cached.looked_up_at + self._ttl_s + self._grace_s

    def _serve_stale(self, sha: str, cached: _Cached, now: float) -> ApiKey | None:
        # Asked again after a TTL; never past the grace, which counts from the last answer.
        ask_at = min(now + self._ttl_s, self._usable_until(cached))
        self._entries[sha] = _Cached(cached.key, cached.looked_up_at, ask_at)
        return cached.key

    def forget(self, sha256: str) -> None:
        """Drop a key from the cache (it was just revoked here)."""
        self._entries.pop(sha256, None)


class Guard:
    """Checks credentials and limits for each request, per the settings."""

    def __init__(self, settings: Settings, store: ApiKeyStore, metrics: Metrics) -> None:
        self._admin_token = settings.admin_token
        self._metrics_token = settings.metrics_token
        self.keys_required = settings.require_api_keys
        self._lease_s = settings.api_key_lease_s
        self._store = store
        self._metrics = metrics
        self.cache = KeyCache(
            store,
            ttl_s=settings.api_key_cache_ttl_s,
            max_entries=settings.api_key_cache_size,
            grace_s=settings.api_key_cache_grace_s,
            on_store_error=lambda: metrics.redis_error("api_key"),
        )

    @property
    def open(self) -> bool:
        """Whether anyone may change the registry and call models."""
        return self._admin_token is None and not self.keys_required

    def describe(self) -> str:
        """Say in one line who may call the gateway (logged at start)."""
        admin = "admin routes need the admin token" if self._admin_token else "admin routes OPEN"
        keys = "inference needs API keys" if self.keys_required else "inference OPEN"
        if self.open:
            return (
                "access control is off: anyone who can reach this port may change the registry "
                "and call models; set admin_token (and require_api_keys) to close it"
            )
        return f"access control: {admin}, {keys}"

    def check_token(self, request: web.Request, access: Literal["admin", "metrics"]) -> None:
        """Raise 401/403 unless the request carries the access's token (none set: open)."""
        token = self._admin_token if access == "admin" else self._metrics_token
        if token is None:
            return
        given = self._bearer(request, access, f"the {access} token")
        # Header bytes that are not UTF-8 arrive as surrogate escapes; they cannot match.
        given_bytes = given.encode("utf-8", errors="surrogateescape")
        if not hmac.compare_digest(given_bytes, token.get_secret_value().encode()):
            self._metrics.auth_refused(access, "rejected")
            raise Forbidden(f"the {access} token is not correct")

    async def check_key(self, request: web.Request) -> ApiKey:
        """Return the request's live API key, or raise 401/403."""
        given = self._bearer(request, "inference", "an API key")
        try:
            key = await self.cache.find(given)
        except StoreUnavailable as exc:
            raise KeysUnavailable(
                "the API key cannot be checked: the key store (Redis) is unreachable and this "
                "gateway process has not seen the key recently; retry shortly",
                headers={"Retry-After": "1"},
            ) from exc
        if key is None:
            self._metrics.auth_refused("inference", "rejected")
            raise Forbidden(
                "the API key is not valid (unknown or revoked); ask the gateway's operator for one"
            )
        return key

    async def acquire(self, key: ApiKey, *, spends: bool = True) -> str | None:
        """Count a request against the key's limits (its token limits and budget too when the
        route `spends` tokens); return the slot to release, or raise 429."""
        counted = key.requests_per_minute is not None or key.max_concurrent is not None
        if not counted and not (spends and key.metered):
            return None
        token = uuid.uuid4().hex
        try:
            admission = await self._store.acquire(key, token, lease_s=self._lease_s, spends=spends)
        except StoreUnavailable as exc:
            self._metrics.redis_error("rate_limit")
            log.warning("rate limit of API key %s not checked: %s", key.id, exc)
            return None
        if admission.admitted:
            return token if key.max_concurrent is not None else None
        assert admission.limit is not None
        self._metrics.rate_limited(admission.limit)
        retry = admission.retry_after_s
        headers = {"Retry-After": str(retry)}
        if admission.limit == "budget":
            raise BudgetExceeded(
                f"API key {key.id} has spent its budget of {key.budget:g} for this "
                f"{key.budget_period}; it renews in {_duration(retry)} (Retry-After), or ask the "
                "gateway's operator for a larger budget",
                headers=headers,
            )
        why = {
            "requests_per_minute": f"is over its limit of {key.requests_per_minute} requests "
            "per minute",
            "max_concurrent": f"already has {key.max_concurrent} requests in progress (its "
            "max_concurrent)",
            "tokens_per_minute": f"is over its limit of {key.tokens_per_minute} tokens per minute",
            "tokens_per_day": f"has used its {key.tokens_per_day} tokens for today (UTC)",
        }[admission.limit]
        raise RateLimited(f"API key {key.id} {why}; retry after {retry}s", headers=headers)

    async def finish(self, key: ApiKey, slot: str | None, trace: Trace | None) -> None:
        """End a request: free its concurrency slot and charge a metered key what its answer
        used, in one step; if Redis fails, the slot's lease frees it later and the charge is
        lost to the limits (not to the usage records)."""
        if slot is None and not key.metered:
            return
        tokens = trace.prompt_tokens + trace.completion_tokens if trace is not None else 0
        cost = trace.cost if trace is not None else 0.0
        try:
            await self._store.finish(key, slot, tokens, cost)
        except (StoreUnavailable, RedisError, OSError) as exc:
            self._metrics.redis_error("rate_limit")
            log.warning("API key %s: slot not released or answer not charged: %s", key.id, exc)

    def _bearer(self, request: web.Request, access: Access, what: str) -> str:
        if access == "inference" and "Authorization" not in request.headers:
            api_key = request.headers.get("x-api-key", "").strip()  # Anthropic's clients
            if api_key:
                return api_key
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            self._metrics.auth_refused(access, "missing")
            raise Unauthorized(
                f"this route needs {what}: send the header 'Authorization: Bearer <token>'",
                headers=_CHALLENGE,
            )
        return value


GUARD = web.AppKey("guard", Guard)
API_KEY = web.RequestKey("api_key", ApiKey)  # the request's key, where keys are required


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    endpoint = request.app[CATALOGUE].find(request)
    if endpoint is not None:
        access = endpoint.access
    else:
        # No route matched (404/405) is answered as such; a route outside the catalogue is
        # treated as an admin route, so forgetting to declare one does not open it.
        access = "public" if request.match_info.route.resource is None else "admin"
    if access == "public":
        return await handler(request)
    guard = request.app[GUARD]
    if access == "admin" or access == "metrics":
        guard.check_token(request, access)
        return await handler(request)
    if not guard.keys_required:
        return await handler(request)
    key = request[API_KEY] = await guard.check_key(request)
    trace = request.get(TRACE)
    if trace is not None:
        trace.key_id = key.id
        trace.metered = key.metered
    # Token limits and budgets hold on the routes that call models (POST), not on listings.
    slot = await guard.acquire(key, spends=request.method == "POST")
    try:
        return await handler(request)
    finally:
        await guard.finish(key, slot, trace)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
