"""Inference API keys in Redis: stored as SHA-256 hashes, with per-key limits.

A key is shown once, when it is created; Redis holds only its hash, so a copy of the database
does not hand out working keys. Limits are enforced across every gateway process by one Lua
step per request: a sliding window of requests per minute (this minute's count plus the last
minute's, weighted by how much of it is still inside the window), a count of requests in
progress, each holding a slot with a lease so a crashed process cannot leak slots forever,
and the key's token limits and money budget against what it has spent (registry/spend.py).
A key with token limits or a budget ("metered") is charged its answer's true count in one
more step when the request ends, which also frees its slot; so it can overspend by at most
what its requests in flight at that moment use.
"""

import hashlib
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from redis.asyncio import Redis

from registry.errors import UnknownApiKey
from registry.keys import Keys
from registry.spend import LUA as SPEND_LUA
from registry.spend import Period, Spend, read_spend
from registry.store import guard

KEY_PREFIX = "gwk-"

# KEYS: apikeys hash, hash index. ARGV: sha256.
_LOOKUP = """
local id = redis.call('HGET', KEYS[2], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[1], id)
"""

# KEYS: apikeys hash, hash index, rate hash, in-flight set, spend hash. ARGV: id.
_REVOKE = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], cjson.decode(record)['sha256'])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
return record
"""

# KEYS: rate hash, in-flight set, spend hash. ARGV: per minute (0: none), concurrent (0: none),
# token, lease ms, tokens per minute, tokens per day, budget (0: none of the three, or not
# checked: a route that spends no tokens), budget period. Answers {1, 0, 0} when admitted,
# else {0, retry ms, which}: 1 per minute, 2 concurrent, 3 tokens per minute, 4 tokens per
# day, 5 budget. The clock is Redis's, so replicas with skewed clocks share one window.
_ACQUIRE = (
    SPEND_LUA
    + """
if redis.replicate_commands then redis.replicate_commands() end
local now = now_ms()
local refused = over(KEYS[3], now, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  ARGV[8])
if refused then return {0, math.max(refused[1], 1), refused[2]} end
local rpm, conc, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local window = now - now % 60000
local w, cur, prev = nil, 0, 0
if rpm > 0 then
  local state = redis.call('HMGET', KEYS[1], 'w', 'n', 'p')
  w = tonumber(state[1])
  if w == window then
    cur, prev = tonumber(state[2]) or 0, tonumber(state[3]) or 0
  elseif w == window - 60000 then
    prev = tonumber(state[2]) or 0
  end
  local left = 1 - (now - window) / 60000
  if prev * left + cur >= rpm then
    local retry = window + 60000 - now
    if cur < rpm and prev > 0 then
      retry = window + math.ceil(60000 * (1 - (rpm - cur) / prev)) - now
    end
    return {0, math.max(retry, 1), 1}
  end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - lease)
  if redis.call('ZCARD', KEYS[2]) >= conc then return {0, 1000, 2} end
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], lease)
end
if rpm > 0 then
  if w == window then
    redis.call('HINCRBY', KEYS[1], 'n', 1)
  else
    redis.call('HSET', KEYS[1], 'w', window, 'n', 1, 'p', prev)
  end
  redis.call('PEXPIRE', KEYS[1], 120000)
end
return {1, 0, 0}
"""
)

# KEYS: in-flight set, spend hash. ARGV: slot token ("": none), tokens, cost, budget period.
# The end of a limited key's request: its concurrency slot freed and its true count charged.
_FINISH = (
    SPEND_LUA
    + """
if redis.replicate_commands then redis.replicate_commands() end
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local tokens = tonumber(ARGV[2])
if tokens > 0 or tonumber(ARGV[3]) > 0 then charge(KEYS[2], tokens, ARGV[3], now_ms(), ARGV[4]) end
return 1
"""
)

# KEYS: spend hashes. Answers {Redis's TIME, then each hash as HGETALL gives it}: one step,
# so the clock and the counts agree (and a Redis Cluster routes it by the keys' one slot).
_SPEND = """
local out = {redis.call('TIME')}
for i, key in ipairs(KEYS) do out[i + 1] = redis.call('HGETALL', key) end
return out
"""

Limit = Literal[
    "requests_per_minute", "max_concurrent", "tokens_per_minute", "tokens_per_day", "budget"
]
_LIMITS: dict[int, Limit] = {
    1: "requests_per_minute",
    2: "max_concurrent",
    3: "tokens_per_minute",
    4: "tokens_per_day",
    5: "budget",
}


def hash_key(secret: str) -> str:
    """Return the SHA-256 (hex) under which a key is stored."""
    return hashlib.sha256(secret.encode("utf-8", errors="surrogateescape")).hexdigest()


class NewApiKey(BaseModel):
    """Body of POST /api/server/keys."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    # Strict: `true` is not a limit of 1.
    requests_per_minute: Annotated[StrictInt, Field(ge=1, le=10_000_000)] | None = None
    max_concurrent: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    tokens_per_minute: Annotated[StrictInt, Field(ge=1, le=10_000_000_000)] | None = None
    tokens_per_day: Annotated[StrictInt, Field(ge=1, le=10_000_000_000_000)] | None = None
    # Money, in the price table's currency, over each `budget_period` (UTC).
    budget: Annotated[float, Field(gt=0, le=1e12)] | None = None
    budget_period: Period = "month"


class ApiKey(BaseModel):
    """An API key as stored: its id, name, limits and hash (the key itself is never kept)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    name: str
    created_at: float
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    budget: float | None = None
    budget_period: Period = "month"
    sha256: str

    @property
    def limited(self) -> bool:
        """Whether requests of this key are counted in Redis before they run."""
        return (
            self.requests_per_minute is not None or self.max_concurrent is not None or self.metered
        )

    @property
    def metered(self) -> bool:
        """Whether the key has token limits or a budget: each answer is charged at its end."""
        return (
            self.tokens_per_minute is not None
            or self.tokens_per_day is not None
            or self.budget is not None
        )

    def public(self) -> dict[str, Any]:
        """Return the key as a listing shows it: no hash, no secret."""
        return self.model_dump(exclude={"sha256"})


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of the rate limiter for one request."""

    admitted: bool
    limit: Limit | None = None
    retry_after_s: int = 0


class ApiKeyStore:
    """Create, list, revoke and look up API keys; admit requests under their limits."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._lookup = redis.register_script(_LOOKUP)
        self._revoke = redis.register_script(_REVOKE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._finish = redis.register_script(_FINISH)
        self._spend = redis.register_script(_SPEND)

    async def create(self, spec: NewApiKey) -> tuple[ApiKey, str]:
        """Store a new key; return it and its secret, which is not kept anywhere."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=secrets.token_hex(8),
            created_at=time.time(),
            sha256=hash_key(secret),
            **spec.model_dump(),
        )

        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.api_keys, key.id, key.model_dump_json())
                pipe.hset(self.keys.api_key_hashes, key.sha256, key.id)
                await pipe.execute()

        await guard(write)
        return key, secret

    async def list(self) -> list[ApiKey]:
        """Return every key, oldest first."""
        raw = await guard(lambda: self.redis.hgetall(self.keys.api_keys))
        keys = [ApiKey.model_validate_json(blob) for blob in raw.values()]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str) -> ApiKey:
        """Delete a key and its counters; raise UnknownApiKey when there is none."""
        keys = [
            self.keys.api_keys,
            self.keys.api_key_hashes,
            self.keys.rate(key_id),
            self.keys.in_flight(key_id),
            self.keys.spend(key_id),
        ]
        record = await guard(lambda: self._revoke(keys=keys, args=[key_id]))
        if not record:
            raise UnknownApiKey(
                f"no API key has the id {key_id!r}; GET /api/server/keys lists them"
            )
        return ApiKey.model_validate_json(record)

    async def lookup(self, sha256: str) -> ApiKey | None:
        """Return the key stored under `sha256`, or None."""
        keys = [self.keys.api_keys, self.keys.api_key_hashes]
        record = await guard(lambda: self._lookup(keys=keys, args=[sha256]))
        return ApiKey.model_validate_json(record) if record else None

    async def acquire(
        self, key: ApiKey, token: str, *, lease_s: float, spends: bool = True
    ) -> Admission:
        """Count one request of `key` against its limits, in one atomic step; its token limits
        and budget are checked (against what is spent) only when the request `spends` tokens."""
        keys = [self.keys.rate(key.id), self.keys.in_flight(key.id), self.keys.spend(key.id)]
        args: list[str | int | float] = [
            key.requests_per_minute or 0,
            key.max_concurrent or 0,
            token,
            max(1, int(lease_s * 1000)),
            (key.tokens_per_minute or 0) if spends else 0,
            (key.tokens_per_day or 0) if spends else 0,
            repr(key.budget or 0.0) if spends else 0,
            key.budget_period,
        ]
        admitted, retry_ms, which = await guard(lambda: self._acquire(keys=keys, args=args))
        if admitted:
            return Admission(True)
        return Admission(False, _LIMITS[int(which)], max(1, math.ceil(int(retry_ms) / 1000)))

    async def finish(self, key: ApiKey, token: str | None, tokens: int, cost: float) -> None:
        """End a request of `key`: free its concurrency slot `token` and, for a metered key,
        charge its answer's `tokens` and `cost`, in one step."""
        if token is None and not key.metered:
            return
        keys = [self.keys.in_flight(key.id), self.keys.spend(key.id)]
        charged = key.metered and (tokens > 0 or cost > 0)
        args: list[str | int] = [
            token or "",
            tokens if charged else 0,
            repr(cost) if charged else "0",
            key.budget_period,
        ]
        await guard(lambda: self._finish(keys=keys, args=args))

    async def spend(self, keys: Sequence[ApiKey]) -> dict[str, Spend]:
        """Return what each key spent now, as its limits count it."""
        if not keys:
            return {}
        names = [self.keys.spend(key.id) for key in keys]
        found = await guard(lambda: self._spend(keys=names, args=[]))
        seconds, micros = found[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return {
            key.id: read_spend(
                dict(zip(flat[::2], flat[1::2], strict=True)), now_ms, key.budget_period
            )
            for key, flat in zip(keys, found[1:], strict=True)
        }
