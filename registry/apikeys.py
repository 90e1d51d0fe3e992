"""Inference API keys in Redis: stored as SHA-256 hashes, with per-key rate limits.

A key is shown once, when it is created; Redis holds only its hash, so a copy of the database
does not hand out working keys. Limits are enforced across every gateway process by one Lua
step per request: a sliding window of requests per minute (this minute's count plus the last
minute's, weighted by how much of it is still inside the window) and a count of requests in
progress, each holding a slot with a lease so a crashed process cannot leak slots forever.
"""

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from redis.asyncio import Redis

from registry.errors import UnknownApiKey
from registry.keys import Keys
from registry.store import guard

KEY_PREFIX = "gwk-"

# KEYS: apikeys hash, hash index. ARGV: sha256.
_LOOKUP = """
local id = redis.call('HGET', KEYS[2], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[1], id)
"""

# KEYS: apikeys hash, hash index, rate hash, in-flight set. ARGV: id.
_REVOKE = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], cjson.decode(record)['sha256'])
redis.call('DEL', KEYS[3], KEYS[4])
return record
"""

# KEYS: rate hash, in-flight set. ARGV: per minute (0: none), concurrent (0: none), token,
# lease ms. Answers {1, 0, 0} when admitted, else {0, retry ms, 1 (per minute) or 2 (concurrent)}.
# The clock is Redis's, so replicas with skewed clocks share one window.
_ACQUIRE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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


class ApiKey(BaseModel):
    """An API key as stored: its id, name, limits and hash (the key itself is never kept)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    name: str
    created_at: float
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
    sha256: str

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.max_concurrent is not None

    def public(self) -> dict[str, Any]:
        """Return the key as a listing shows it: no hash, no secret."""
        return self.model_dump(exclude={"sha256"})


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of the rate limiter for one request."""

    admitted: bool
    limit: Literal["requests_per_minute", "max_concurrent"] | None = None
    retry_after_s: int = 0


class ApiKeyStore:
    """Create, list, revoke and look up API keys; admit requests under their limits."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._lookup = redis.register_script(_LOOKUP)
        self._revoke = redis.register_script(_REVOKE)
        self._acquire = redis.register_script(_ACQUIRE)

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

    async def acquire(self, key: ApiKey, token: str, *, lease_s: float) -> Admission:
        """Count one request of `key` against its limits, in one atomic step."""
        keys = [self.keys.rate(key.id), self.keys.in_flight(key.id)]
        args: list[str | int] = [
            key.requests_per_minute or 0,
            key.max_concurrent or 0,
            token,
            max(1, int(lease_s * 1000)),
        ]
        admitted, retry_ms, which = await guard(lambda: self._acquire(keys=keys, args=args))
        if admitted:
            return Admission(True)
        limit: Literal["requests_per_minute", "max_concurrent"] = (
            "requests_per_minute" if int(which) == 1 else "max_concurrent"
        )
        return Admission(False, limit, max(1, math.ceil(int(retry_ms) / 1000)))

    async def release(self, key: ApiKey, token: str) -> None:
        """Free the concurrency slot `token` held."""
        if key.max_concurrent is not None:
            await guard(lambda: self.redis.zrem(self.keys.in_flight(key.id), token))
