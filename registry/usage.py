"""Usage in Redis: tokens and cost per API key, model, worker and minute, with rollups.

Each gateway process sums its answers in memory and writes the sums in one Lua step every
few hundred milliseconds (gateway/accounting.py). One step adds each sum to three buckets, the
minute's, the hour's and the day's (UTC), so rollups cost nothing later and a bucket is never
half rolled up. A bucket is a hash (`Keys.usage`) whose fields are
`<key id>\\x1f<model>\\x1f<worker>\\x1f<estimated 0|1>\\x1f<counter>`, counter one of `n`
(answers), `p` (prompt tokens), `c` (completion tokens), `x` (cached prompt tokens) and `$`
(cost). Model names and worker labels hold no control characters, so the separator is safe.
Each bucket expires its retention after its last write.

A flush carries an id, and the step first sets a marker for it (`Keys.usage_flush`): a flush
retried after its answer was lost (the step ran, the connection dropped) is not counted twice.
The same step charges the spend of keys without token limits or budget (registry/spend.py);
limited keys are charged at the end of each request instead (apikeys.py).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from registry.keys import Keys
from registry.spend import LUA as SPEND_LUA
from registry.spend import Period
from registry.store import guard

Unit = Literal["m", "h", "d"]
UNIT_S: dict[Unit, int] = {"m": 60, "h": 3600, "d": 86400}
SEP = "\x1f"
_MARKER_TTL_S = 3600  # a flush is retried within seconds; an hour is plenty
_COARSE_FIRST: tuple[Unit, ...] = ("d", "h", "m")
_FINE_FIRST: tuple[Unit, ...] = ("m", "h", "d")

# KEYS[1]: the flush's marker; KEYS[2 .. 1 + #b]: usage buckets; then the spend hashes.
# ARGV[1]: JSON {"b": [[ttl_s, {field: int}, {field: float}], ...],
#                "s": [[tokens, cost, period], ...]}; ARGV[2]: the marker's ttl in seconds.
# Answers 1, or 0 for a flush already applied.
_FLUSH = (
    SPEND_LUA
    + """
if redis.replicate_commands then redis.replicate_commands() end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
local batch = cjson.decode(ARGV[1])
for i, bucket in ipairs(batch.b) do
  local key = KEYS[1 + i]
  for name, n in pairs(bucket[2]) do redis.call('HINCRBY', key, name, n) end
  for name, x in pairs(bucket[3]) do redis.call('HINCRBYFLOAT', key, name, x) end
  redis.call('EXPIRE', key, bucket[1])
end
local now = now_ms()
for i, s in ipairs(batch.s) do charge(KEYS[1 + #batch.b + i], s[1], s[2], now, s[3]) end
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Group:
    """What usage is summed by: the API key ("" for none), model, worker and whether the
    counts were estimated."""

    key: str
    model: str
    worker: str
    estimated: bool


@dataclass(slots=True)
class Tally:
    """Sums of answers: how many, their tokens and their cost."""

    requests: int = 0
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cost: float = 0.0

    def add(self, other: "Tally") -> None:
        self.requests += other.requests
        self.prompt += other.prompt
        self.completion += other.completion
        self.cached += other.cached
        self.cost += other.cost


@dataclass(slots=True)
class Batch:
    """One flush: sums by (minute start, group), and the spend to charge per key."""

    minutes: dict[tuple[int, Group], Tally] = field(default_factory=dict)
    spend: dict[str, tuple[int, float, Period]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.minutes) + len(self.spend)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each kind of bucket is kept after its last write, in seconds."""

    minute_s: int
    hour_s: int
    day_s: int

    def of(self, unit: Unit) -> int:
        return {"m": self.minute_s, "h": self.hour_s, "d": self.day_s}[unit]


class UsageStore:
    """Write usage batches and read usage buckets."""

    def __init__(self, redis: Redis, prefix: str, retention: Retention) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.retention = retention
        self._flush = redis.register_script(_FLUSH)

    async def write(self, flush_id: str, batch: Batch) -> bool:
        """Apply `batch` once; return False when a flush of this id was applied before."""
        buckets: dict[str, tuple[int, dict[str, int], dict[str, float]]] = {}
        for (minute, group), tally in batch.minutes.items():
            for unit, size in UNIT_S.items():
                start = minute - minute % size
                name = self.keys.usage(unit, start)
                bucket = buckets.get(name)
                if bucket is None:
                    bucket = buckets[name] = (self.retention.of(unit) + size, {}, {})
                _add_fields(bucket[1], bucket[2], group, tally)
        keys = [self.keys.usage_flush(flush_id), *buckets]
        keys += [self.keys.spend(key_id) for key_id in batch.spend]
        doc = {
            "b": [[ttl, ints, floats] for ttl, ints, floats in buckets.values()],
            "s": [list(charge) for charge in batch.spend.values()],
        }
        args: list[bytes | int] = [orjson.dumps(doc), _MARKER_TTL_S]
        applied = await guard(lambda: self._flush(keys=keys, args=args))
        return bool(applied)

    async def read(self, buckets: Sequence[tuple[Unit, int]]) -> list[dict[Group, Tally]]:
        """Return the sums in each bucket (unit, start), in the order asked."""
        if not buckets:
            return []

        async def fetch() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for unit, start in buckets:
                    pipe.hgetall(self.keys.usage(unit, start))
                found: list[Any] = await pipe.execute()
                return found

        return [parse_bucket(fields) for fields in await guard(fetch)]


def _add_fields(ints: dict[str, int], floats: dict[str, float], group: Group, tally: Tally) -> None:
    base = SEP.join((group.key, group.model, group.worker, "1" if group.estimated else "0"))
    for counter, value in (
        ("n", tally.requests),
        ("p", tally.prompt),
        ("c", tally.completion),
        ("x", tally.cached),
    ):
        if value:
            name = base + SEP + counter
            ints[name] = ints.get(name, 0) + value
    if tally.cost:
        name = base + SEP + "$"
        floats[name] = floats.get(name, 0.0) + tally.cost


def parse_bucket(fields: Mapping[bytes, bytes]) -> dict[Group, Tally]:
    """Read a bucket hash into sums by group; fields not in this shape are skipped."""
    out: dict[Group, Tally] = {}
    for raw_name, raw_value in fields.items():
        parts = raw_name.decode("utf-8", "replace").split(SEP)
        if len(parts) != 5:
            continue
        key, model, worker, estimated, counter = parts
        group = Group(key, model, worker, estimated == "1")
        tally = out.get(group)
        if tally is None:
            tally = out[group] = Tally()
        try:
            if counter == "$":
                tally.cost += float(raw_value)
            elif counter in _COUNTERS:
                setattr(
                    tally, _COUNTERS[counter], getattr(tally, _COUNTERS[counter]) + int(raw_value)
                )
        except ValueError:
            continue
    return out


_COUNTERS = {"n": "requests", "p": "prompt", "c": "completion", "x": "cached"}


def merge(into: dict[Group, Tally], more: Iterable[tuple[Group, Tally]]) -> None:
    """Add sums by group into `into`."""
    for group, tally in more:
        mine = into.get(group)
        if mine is None:
            into[group] = mine = Tally()
        mine.add(tally)


def plan(
    since_s: int, until_s: int, now_s: int, retention: Retention, unit: Unit | None = None
) -> tuple[list[tuple[Unit, int]], int, int]:
    """The buckets that cover [since_s, until_s), and the range they cover in fact.

    With `unit`, buckets of that unit only. Without, the fewest buckets: whole days, then
    whole hours, then minutes at the edges; where a bucket of that size is past its retention
    the next larger one is read instead, which widens the range (said in the answer).
    """
    if unit is not None:
        size = UNIT_S[unit]
        start = since_s - since_s % size
        oldest = now_s - retention.of(unit) - size
        start = max(start, oldest - oldest % size)
        end = -(-until_s // size) * size
        return [(unit, t) for t in range(start, end, size)], start, max(end, start)
    t = since_s - since_s % 60
    end = -(-until_s // 60) * 60
    buckets: list[tuple[Unit, int]] = []
    first: int | None = None
    last = t
    while t < end:
        chosen: tuple[Unit, int] | None = None
        for u in _COARSE_FIRST:
            size = UNIT_S[u]
            if t % size == 0 and t + size <= end and now_s < t + size + retention.of(u):
                chosen = (u, t)
                break
        if chosen is None:  # the fitting buckets have expired: the smallest kept one holding t
            for u in _FINE_FIRST:
                size = UNIT_S[u]
                start = t - t % size
                if now_s < start + size + retention.of(u):
                    chosen = (u, start)
                    break
        if chosen is None:  # older than every retention: nothing is kept
            t = t - t % 86400 + 86400
            continue
        u, start = chosen
        if buckets and buckets[-1] == chosen:
            t = start + UNIT_S[u]
            continue
        buckets.append(chosen)
        first = start if first is None else first
        t = last = start + UNIT_S[u]
    if first is None:
        return [], since_s, since_s
    return buckets, first, last
