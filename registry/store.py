"""The worker registry in Redis: atomic writes, snapshots and change events.

A write is one Lua script: it changes the record, the per-model index and the version counter
and publishes the change event in a single atomic step, so a follower that sees version N has
seen every change up to N, and a gap in versions tells it to resync.
"""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from registry.errors import DuplicateWorker, StoreUnavailable, UnknownWorker
from registry.keys import Keys
from registry.models import Change, WorkerRecord, worker_id

T = TypeVar("T")

# KEYS: workers hash, model index, version. ARGV: id, record JSON, replace flag, channel.
_PUT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 and ARGV[3] ~= '1' then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4],
  '{"v":' .. v .. ',"op":"put","id":"' .. ARGV[1] .. '","record":' .. ARGV[2] .. '}')
return v
"""

# KEYS: workers hash, model index, version. ARGV: id, channel.
_DEL = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return -1
end
redis.call('SREM', KEYS[2], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], '{"v":' .. v .. ',"op":"del","id":"' .. ARGV[1] .. '"}')
return v
"""


class RegistryStore:
    """Register, replace, take offline and read workers in one Redis."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._put = redis.register_script(_PUT)
        self._del = redis.register_script(_DEL)

    async def put(self, record: WorkerRecord, *, replace: bool) -> Change:
        """Store `record`; raise DuplicateWorker when it exists and `replace` is false."""
        payload = record.model_dump_json()
        keys = [self.keys.workers, self.keys.model(record.model_name), self.keys.version]
        args = [record.id, payload, "1" if replace else "0", self.keys.events]
        version = await _guard(lambda: self._put(keys=keys, args=args))
        if version == -1:
            raise DuplicateWorker(
                f"worker (model_name={record.model_name}, "
                f"req_url_template={record.req_url_template}) is already registered; "
                'send "replace": true to update it, or take it offline first'
            )
        return Change(v=int(version), op="put", id=record.id, record=record)

    async def delete(self, model_name: str, req_url_template: str) -> Change:
        """Remove a worker; raise UnknownWorker when it is not registered."""
        wid = worker_id(model_name, req_url_template)
        keys = [self.keys.workers, self.keys.model(model_name), self.keys.version]
        version = await _guard(lambda: self._del(keys=keys, args=[wid, self.keys.events]))
        if version == -1:
            raise UnknownWorker(
                f"no worker (model_name={model_name}, url={req_url_template}) is registered; "
                "GET /api/server/workers lists the registered ones"
            )
        return Change(v=int(version), op="del", id=wid)

    async def snapshot(self) -> tuple[int, list[WorkerRecord]]:
        """Read every record and the version they correspond to, atomically."""

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys.workers)
                pipe.get(self.keys.version)
                return list(await pipe.execute())

        raw, version = await _guard(read)
        records = []
        for blob in raw.values():
            try:
                records.append(WorkerRecord.model_validate_json(blob))
            except ValidationError:
                # A record this version cannot read (written by a newer one, or by hand) is
                # skipped rather than taking the whole registry down.
                continue
        return int(version or 0), records

    async def version(self) -> int:
        """Return the current registry version."""
        return int(await _guard(lambda: self.redis.get(self.keys.version)) or 0)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        await _guard(self.redis.ping)


def parse_change(data: bytes | str) -> Change | None:
    """Decode one change event from the channel; None if it is not one this version reads."""
    try:
        return Change.model_validate(orjson.loads(data))
    except (orjson.JSONDecodeError, ValidationError):
        return None


async def _guard(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(
            f"the registry store (Redis) is unreachable: {exc or type(exc).__name__}; "
            "the gateway keeps routing from its last view, retry the change shortly"
        ) from exc
