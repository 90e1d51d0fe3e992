"""Workers a config file declares: make the registry match the file, as often as asked.

Every gateway reading the file applies it at start, so several replicas starting at once all
apply it. Each write is a compare-and-swap: it happens only if the record is still the one
the process read, and a process whose swap fails reads the record again and compares anew.
So N replicas with the same file make one write (one version bump) per real difference and
no write at all when the registry already matches; two files that disagree end with the
last writer's view, not in a loop.

A record is compared without its `registered_at`, which is kept across changes so a pool's
order does not move. Only workers managed by the same file (`managed_by` is its path) are
removed when the file no longer declares them; a worker registered through the API that the
file now declares is taken over by the file.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from registry.errors import StoreUnavailable
from registry.models import Change, WorkerRecord, WorkerSpec
from registry.store import RegistryStore, guard

log = logging.getLogger(__name__)

# Rounds of read-compare-swap before giving up (each lost race costs one).
_ROUNDS = 10

# KEYS: workers, model index, version, expiry. ARGV: id, the JSON read ("" = none), new JSON,
# channel. Answers the new version, or -1 when the record is no longer the one read.
_SWAP = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4],
  '{"v":' .. v .. ',"op":"put","id":"' .. ARGV[1] .. '","record":' .. ARGV[3] .. '}')
return v
"""

# KEYS: workers, model index, version, expiry, health. ARGV: id, the JSON read, channel.
# Answers the new version, or -1 when the record is no longer the one read.
_DROP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return -1
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[3], '{"v":' .. v .. ',"op":"del","id":"' .. ARGV[1] .. '"}')
return v
"""


@dataclass
class Applied:
    """What applying a file changed, and the change events of this process's writes."""

    added: list[str] = field(default_factory=list)  # worker ids
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    changes: list[Change] = field(default_factory=list)


async def apply_managed(store: RegistryStore, source: str, specs: Sequence[WorkerSpec]) -> Applied:
    """Make the workers managed by `source` exactly `specs`; write only what differs."""
    swap = store.redis.register_script(_SWAP)
    drop = store.redis.register_script(_DROP)
    k = store.keys
    wanted = {spec.worker_id: spec for spec in specs}
    done = Applied()
    settled: set[str] = set()
    for _ in range(_ROUNDS):
        raw = await guard(lambda: store.redis.hgetall(k.workers))
        current = {_text(wid): _bytes(blob) for wid, blob in raw.items()}
        lost = 0
        for wid, spec in wanted.items():
            if wid in settled:
                continue
            blob = current.get(wid)
            old = _record(blob)
            record = WorkerRecord.from_spec(
                spec,
                managed_by=source,
                registered_at=old.registered_at if old is not None else time.time(),
            )
            if old is not None and _same(old, record):
                settled.add(wid)
                done.unchanged += 1
                continue
            payload = record.model_dump_json()
            keys = [k.workers, k.model(record.model_name), k.version, k.expiry]
            args: list[bytes | str] = [wid, blob or b"", payload, k.events]
            version = int(await guard(lambda: swap(keys=keys, args=args)))  # noqa: B023
            if version == -1:
                lost += 1
                continue
            settled.add(wid)
            (done.changed if blob is not None else done.added).append(wid)
            done.changes.append(Change(v=version, op="put", id=wid, record=record))
        for wid, blob in current.items():
            if wid in wanted or wid in settled:
                continue
            old = _record(blob)
            if old is None or old.managed_by != source:
                continue
            keys = [k.workers, k.model(old.model_name), k.version, k.expiry, k.health]
            args = [wid, blob, k.events]
            version = int(await guard(lambda: drop(keys=keys, args=args)))  # noqa: B023
            if version == -1:
                lost += 1
                continue
            settled.add(wid)
            done.removed.append(wid)
            done.changes.append(Change(v=version, op="del", id=wid))
        if not lost:
            return done
    raise StoreUnavailable(
        f"the workers of {source} could not be applied: other writers kept changing them "
        f"({_ROUNDS} rounds); retry"
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _record(blob: bytes | None) -> WorkerRecord | None:
    if blob is None:
        return None
    try:
        return WorkerRecord.model_validate_json(blob)
    except ValidationError:
        return None  # unreadable (written by a newer version, or by hand): the file's wins


def _same(old: WorkerRecord, new: WorkerRecord) -> bool:
    ignore = {"registered_at"}
    return old.model_dump(exclude=ignore) == new.model_dump(exclude=ignore)
