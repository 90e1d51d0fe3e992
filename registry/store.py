"""The worker registry in Redis: atomic writes, snapshots and change events.

Workers, their health and model settings share one version counter and one event channel.
A write is one Lua script: it changes the record, the per-model index and the version counter
and publishes the change event in a single atomic step, so a follower that sees version N has
seen every change up to N, and a gap in versions tells it to resync.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from registry.errors import (
    DuplicateWorker,
    ManagedWorker,
    StoreUnavailable,
    UnknownModelSettings,
    UnknownWorker,
)
from registry.keys import Keys
from registry.model_settings import ModelRecord
from registry.models import Change, Health, WorkerRecord, other_forms, worker_id

T = TypeVar("T")

# Milliseconds on the Redis server's clock, so every gateway agrees on heartbeat deadlines.
_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# The config file that manages the record in `old` (its JSON), or nil.
_MANAGER = """
local function manager(old)
  if not old then return nil end
  local by = cjson.decode(old)['managed_by']
  if by == nil or by == cjson.null then return nil end
  return by
end
"""

# KEYS: workers, model index, version, expiry, health.
# ARGV: id, record JSON, replace flag, channel, ttl in ms ("" when the worker has none).
# Answers the new version, -1 when the worker exists and replace is off, or the path of the
# config file that manages the worker (the API does not change those).
_PUT = (
    _NOW_MS
    + _MANAGER
    + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local by = manager(old)
if by then
  return by
end
if old and ARGV[3] ~= '1' then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4],
  '{"v":' .. v .. ',"op":"put","id":"' .. ARGV[1] .. '","record":' .. ARGV[2] .. '}')
return v
"""
)

# KEYS: workers, model index, version, expiry, health. ARGV: id, channel.
# Answers the new version, -1 when there is no such worker, or the path of the config file
# that manages it.
_DEL = (
    _MANAGER
    + """
local by = manager(redis.call('HGET', KEYS[1], ARGV[1]))
if by then
  return by
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return -1
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], '{"v":' .. v .. ',"op":"del","id":"' .. ARGV[1] .. '"}')
return v
"""
)

# KEYS: workers, health, version. ARGV: id, health JSON, channel.
_HEALTH = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return -1
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[3],
  '{"v":' .. v .. ',"op":"health","id":"' .. ARGV[1] .. '","health":' .. ARGV[2] .. '}')
return v
"""

# KEYS: workers, expiry. ARGV: id. The ttl is the record's own, so any process can renew it.
_HEARTBEAT = (
    _NOW_MS
    + """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return -1
end
local ttl = cjson.decode(record)['ttl_s']
if ttl == nil or ttl == cjson.null then
  return 0
end
redis.call('ZADD', KEYS[2], now + math.floor(ttl * 1000), ARGV[1])
return math.floor(ttl * 1000)
"""
)

# KEYS: expiry, workers, version, health. ARGV: model index key prefix, channel, batch size.
# The per-model index key is derived from the record; it carries the same hash tag as KEYS, so
# it lives in the same Redis Cluster slot.
_REAP = (
    _NOW_MS
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local reaped = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local record = redis.call('HGET', KEYS[2], id)
  if record then
    local model = cjson.decode(record)['model_name']
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('SREM', ARGV[1] .. model, id)
    local v = redis.call('INCR', KEYS[3])
    redis.call('PUBLISH', ARGV[2], '{"v":' .. v .. ',"op":"del","id":"' .. id .. '"}')
    table.insert(reaped, id)
  end
end
return reaped
"""
)


# KEYS: models, version. ARGV: model name, record JSON, channel. The name is encoded by cjson:
# unlike a worker id, it may hold quotes or backslashes.
_MODEL_PUT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], '{"v":' .. v .. ',"op":"model","id":' .. cjson.encode(ARGV[1])
  .. ',"model":' .. ARGV[2] .. '}')
return v
"""

# KEYS: models, version. ARGV: model name, channel.
_MODEL_DEL = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return -1
end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], '{"v":' .. v .. ',"op":"model_del","id":' .. cjson.encode(ARGV[1])
  .. '}')
return v
"""

# KEYS: workers, health, version, models. One atomic read (a MULTI is not available on a
# Cluster).
_SNAPSHOT = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
        redis.call('GET', KEYS[3]), redis.call('HGETALL', KEYS[4])}
"""


class Snapshot(NamedTuple):
    """Everything a view is built from, at one version."""

    version: int
    records: list[WorkerRecord]
    health: dict[str, Health]
    models: list[ModelRecord]


class RegistryStore:
    """Register, replace, take offline and read workers in one Redis."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._put = redis.register_script(_PUT)
        self._del = redis.register_script(_DEL)
        self._health = redis.register_script(_HEALTH)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._reap = redis.register_script(_REAP)
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._model_put = redis.register_script(_MODEL_PUT)
        self._model_del = redis.register_script(_MODEL_DEL)

    async def put(self, record: WorkerRecord, *, replace: bool) -> Change:
        """Store `record`; raise DuplicateWorker when it exists and `replace` is false."""
        payload = record.model_dump_json()
        k = self.keys
        keys = [k.workers, k.model(record.model_name), k.version, k.expiry, k.health]
        ttl_ms = "" if record.ttl_s is None else str(int(record.ttl_s * 1000))
        args = [record.id, payload, "1" if replace else "0", k.events, ttl_ms]
        version = await guard(lambda: self._put(keys=keys, args=args))
        if isinstance(version, bytes):
            raise managed(record.model_name, record.req_url_template, version)
        if version == -1:
            raise DuplicateWorker(
                f"worker (model_name={record.model_name}, "
                f"req_url_template={record.req_url_template}) is already registered; "
                'send "replace": true to update it, or take it offline first'
            )
        return Change(v=int(version), op="put", id=record.id, record=record)

    async def delete(self, model_name: str, req_url_template: str) -> Change:
        """Remove a worker (any of its URL forms names it); raise UnknownWorker if it is not."""
        k = self.keys
        keys = [k.workers, k.model(model_name), k.version, k.expiry, k.health]

        async def delete(wid: str) -> int | bytes:
            # The new version, -1, or the path of the config file that manages the worker.
            answer: int | bytes = await guard(lambda: self._del(keys=keys, args=[wid, k.events]))
            return answer

        wid = worker_id(model_name, req_url_template)
        version = await delete(wid)
        if version == -1 and (other := await self._other_form(model_name, req_url_template)):
            wid = other
            version = await delete(wid)
        if isinstance(version, bytes):
            raise managed(model_name, req_url_template, version)
        if version == -1:
            raise UnknownWorker(
                f"no worker (model_name={model_name}, url={req_url_template}) is registered; "
                "GET /api/server/workers lists the registered ones"
            )
        return Change(v=int(version), op="del", id=wid)

    async def set_health(self, wid: str, health: Health) -> Change | None:
        """Record a worker's new health state; None when the worker is no longer registered."""
        k = self.keys
        keys = [k.workers, k.health, k.version]
        payload = health.model_dump_json()
        version = await guard(lambda: self._health(keys=keys, args=[wid, payload, k.events]))
        if version == -1:
            return None
        return Change(v=int(version), op="health", id=wid, health=health)

    async def heartbeat(self, model_name: str, req_url_template: str) -> float | None:
        """Push a worker's deadline to now + its ttl_s; return the ttl (0 when it has none).

        Raise UnknownWorker when it is not registered (it lapsed, or was taken offline).
        """
        keys = [self.keys.workers, self.keys.expiry]

        async def beat(wid: str) -> int:
            return int(await guard(lambda: self._heartbeat(keys=keys, args=[wid])))

        ttl_ms = await beat(worker_id(model_name, req_url_template))
        if ttl_ms < 0 and (other := await self._other_form(model_name, req_url_template)):
            ttl_ms = await beat(other)
        if ttl_ms < 0:
            raise UnknownWorker(
                f"worker (model_name={model_name}, url={req_url_template}) is not registered "
                "(its heartbeat lapsed or it was taken offline): register it again"
            )
        return ttl_ms / 1000

    async def _other_form(self, model_name: str, req_url_template: str) -> str | None:
        """Return the id of the preset worker `req_url_template` names in another of its URL
        forms (an endpoint URL for the stored base URL), when one is registered.

        Only asked when the URL as given names no worker, so the common case costs nothing.
        """
        forms = other_forms(model_name, req_url_template)
        if not forms:
            return None
        ids = list(forms)
        blobs = await guard(lambda: self.redis.hmget(self.keys.workers, ids))
        for wid, blob in zip(ids, blobs, strict=True):
            if blob is None:
                continue
            try:
                preset = orjson.loads(blob).get("preset")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if preset in forms[wid]:
                return wid
        return None

    async def reap(self, batch: int = 100) -> list[str]:
        """Remove workers whose heartbeat deadline has passed; return their ids."""
        k = self.keys
        keys = [k.expiry, k.workers, k.version, k.health]
        args = [k.model_prefix, k.events, str(batch)]
        reaped = await guard(lambda: self._reap(keys=keys, args=args))
        return [wid.decode() if isinstance(wid, bytes) else str(wid) for wid in reaped]

    async def put_model(self, record: ModelRecord) -> Change:
        """Store a model's settings, replacing what was stored for it."""
        k = self.keys
        args = [record.name, record.model_dump_json(), k.events]
        version = await guard(lambda: self._model_put(keys=[k.models, k.version], args=args))
        return Change(v=int(version), op="model", id=record.name, model=record)

    async def delete_model(self, name: str) -> Change:
        """Remove a model's stored settings; raise UnknownModelSettings when it has none."""
        k = self.keys
        args = [name, k.events]
        version = await guard(lambda: self._model_del(keys=[k.models, k.version], args=args))
        if version == -1:
            raise UnknownModelSettings(
                f"model {name!r} has no settings set through the API; "
                "GET /api/server/models lists every model and where its settings come from"
            )
        return Change(v=int(version), op="model_del", id=name)

    async def snapshot(self) -> Snapshot:
        """Read every record, its health, the model settings and their version, atomically."""

        k = self.keys
        flat_records, flat_health, version, flat_models = await guard(
            lambda: self._snapshot(keys=[k.workers, k.health, k.version, k.models])
        )
        records = []
        for count, blob in enumerate(flat_records[1::2], start=1):
            if count % 500 == 0:
                await asyncio.sleep(0)  # a large registry must not stall the event loop
            try:
                records.append(WorkerRecord.model_validate_json(blob))
            except ValidationError:
                # A record this version cannot read (written by a newer one, or by hand) is
                # skipped rather than taking the whole registry down.
                continue
        health: dict[str, Health] = {}
        for wid, blob in zip(flat_health[0::2], flat_health[1::2], strict=True):
            try:
                health[wid.decode()] = Health.model_validate_json(blob)
            except ValidationError:
                continue
        models: list[ModelRecord] = []
        for blob in flat_models[1::2]:
            try:
                models.append(ModelRecord.model_validate_json(blob))
            except ValidationError:
                continue
        return Snapshot(int(version or 0), records, health, models)

    async def version(self) -> int:
        """Return the current registry version."""
        return int(await guard(lambda: self.redis.get(self.keys.version)) or 0)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        await guard(self.redis.ping)


def managed(model_name: str, req_url_template: str, source: bytes) -> ManagedWorker:
    """The error for an API write to a worker that the config file `source` declares."""
    return ManagedWorker(
        f"worker (model_name={model_name}, req_url_template={req_url_template}) is declared "
        f"in the config file {source.decode(errors='replace')}: change or remove it there and "
        "restart the gateway; the API does not change workers a config file manages"
    )


def parse_change(data: bytes | str) -> Change | None:
    """Decode one change event from the channel; None if it is not one this version reads."""
    try:
        return Change.model_validate(orjson.loads(data))
    except (orjson.JSONDecodeError, ValidationError):
        return None


# What a Redis client raises when the store cannot be reached: a cluster client's own error
# tree does not descend from RedisError.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


async def guard(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(
            f"the registry store (Redis) is unreachable: {exc or type(exc).__name__}; "
            "the gateway keeps routing from its last view, retry the change shortly"
        ) from exc
