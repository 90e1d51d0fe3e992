"""Usage and prices: who used how many tokens of which model, and what tokens cost.

GET /api/server/usage (admin) and /api/server/usage/me (the calling API key's own) read the
usage buckets in Redis (registry/usage.py); /api/server/prices shows and sets the price table.
"""

import datetime
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.accounting import ACCOUNTANT, USAGE
from gateway.auth import API_KEY, GUARD
from gateway.endpoints import Routes
from gateway.errors import InvalidRequest, NotFound
from gateway.routes._common import json_response, parse
from gateway.routes.admin import Done, Listing
from gateway.state import API_KEYS, SETTINGS
from registry import UNIT_S, Group, NewPrice, Price, PriceStore, Tally, Unit
from registry.usage import plan

routes = Routes("admin")

_DIMENSIONS = ("key", "model", "worker", "estimated")
_UNITS: dict[str, Unit] = {"minute": "m", "hour": "h", "day": "d"}
_MAX_BUCKETS = 10_000
_DEFAULT_RANGE_S = 86_400
_AHEAD_S = 3600  # clocks of replicas differ a little
_LATEST_S = 253_402_300_799  # 9999-12-31T23:59:59Z


class UsageReport(BaseModel):
    """Usage summed over a range, in rows by the `group_by` columns, and its total."""

    success: bool
    since: str
    until: str
    group_by: list[str]
    data: list[dict[str, Any]]
    total: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Query:
    since_s: int
    until_s: int
    key: str | None
    model: str | None
    worker: str | None
    dimensions: tuple[str, ...]
    unit: Unit | None


@routes.get("/api/server/usage", access="admin", answer=UsageReport)
async def usage(request: web.Request) -> web.Response:
    """Sum usage over a range (since, until), filtered by key, model or worker, by group_by."""
    query = _query(request.query, _oldest_s(request))
    return json_response(await _report(request, query))


@routes.get("/api/server/usage/me", access="inference", answer=UsageReport)
async def my_usage(request: web.Request) -> web.Response:
    """The calling API key's own usage (as /api/server/usage), its limits and its spend."""
    # Where keys are not required the middleware looked none up; the caller may send one.
    key = request.get(API_KEY) or await request.app[GUARD].check_key(request)
    query = _query(request.query, _oldest_s(request), key=key.id)
    report = await _report(request, query)
    spend = await request.app[API_KEYS].spend([key])
    report["key"] = {**key.public(), "spend": spend[key.id].public()}
    return json_response(report)


def _query(params: Mapping[str, str], oldest_s: float, *, key: str | None = None) -> Query:
    now = time.time()
    until = _time(params.get("until"), "until", now)
    since = _time(params.get("since"), "since", until - _DEFAULT_RANGE_S)
    if since >= until:
        raise InvalidRequest("since must be before until (both unix seconds or ISO 8601 times)")
    # Nothing is kept before the oldest day bucket, nor written after now.
    since, until = max(since, now - oldest_s), min(until, now + _AHEAD_S)
    if since >= until:
        since = until = float(int(now))
    columns = [c.strip() for c in params.get("group_by", "key,model").split(",") if c.strip()]
    dimensions: list[str] = []
    unit: Unit | None = None
    for column in columns:
        if column in _UNITS:
            if unit is not None:
                raise InvalidRequest("group_by takes at most one of minute, hour and day")
            unit = _UNITS[column]
        elif column in _DIMENSIONS:
            if column not in dimensions:
                dimensions.append(column)
        else:
            raise InvalidRequest(
                f"group_by {column[:40]!r} is not one of key, model, worker, estimated, "
                "minute, hour, day"
            )
    return Query(
        int(since),
        int(-(-until // 1)),
        key if key is not None else params.get("key") or None,
        params.get("model") or None,
        params.get("worker") or None,
        tuple(dimensions),
        unit,
    )


def _time(raw: str | None, name: str, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if not 0 <= seconds <= _LATEST_S:  # also NaN
            raise InvalidRequest(f"{name} {raw[:40]!r} is not a time between 1970 and 9999")
        return seconds
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{name} {raw[:40]!r} is neither unix seconds nor an ISO 8601 time "
            "(2026-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    seconds = moment.timestamp()
    if not 0 <= seconds <= _LATEST_S:
        raise InvalidRequest(f"{name} {raw[:40]!r} is not a time between 1970 and 9999")
    return seconds


def _oldest_s(request: web.Request) -> float:
    return request.app[USAGE].retention.day_s + 86_400.0


async def _report(request: web.Request, query: Query) -> dict[str, Any]:
    store = request.app[USAGE]
    if query.since_s < query.until_s:
        buckets, since, until = plan(
            query.since_s, query.until_s, int(time.time()), store.retention, query.unit
        )
    else:  # a range wholly before what is kept, or after now
        buckets, since, until = [], query.since_s, query.since_s
    if len(buckets) > _MAX_BUCKETS:
        raise InvalidRequest(
            f"that range holds {len(buckets)} buckets of this size; ask for a shorter range "
            "or group by a larger unit (hour, day)"
        )
    found = await store.read(buckets)
    rows: dict[tuple[Any, ...], Tally] = {}
    estimated_requests: dict[tuple[Any, ...], int] = {}
    total, total_estimated = Tally(), 0
    for (_unit, start), groups in zip(buckets, found, strict=True):
        for group, tally in groups.items():
            if not _matches(query, group):
                continue
            row = _row_key(query, group, start if query.unit is not None else None)
            mine = rows.get(row)
            if mine is None:
                mine = rows[row] = Tally()
            mine.add(tally)
            total.add(tally)
            if group.estimated:
                estimated_requests[row] = estimated_requests.get(row, 0) + tally.requests
                total_estimated += tally.requests
    names = await _key_names(request) if "key" in query.dimensions else {}
    data = [
        _row(query, row, tally, estimated_requests.get(row, 0), names)
        for row, tally in sorted(rows.items(), key=lambda item: _sortable(item[0]))
    ]
    columns = list(query.dimensions) + ([_unit_name(query.unit)] if query.unit else [])
    return {
        "success": True,
        "since": _iso(since),
        "until": _iso(until),
        "group_by": columns,
        "data": data,
        "total": _counters(total, total_estimated),
    }


def _matches(query: Query, group: Group) -> bool:
    if query.key is not None and group.key != query.key:
        return False
    if query.model is not None and group.model != query.model:
        return False
    return query.worker is None or group.worker == query.worker


def _row_key(query: Query, group: Group, start: int | None) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "key": group.key,
        "model": group.model,
        "worker": group.worker,
        "estimated": group.estimated,
    }
    return (start, *(values[d] for d in query.dimensions))


def _sortable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple("" if v is None else str(v) for v in row)


def _row(
    query: Query, row: tuple[Any, ...], tally: Tally, estimated: int, names: dict[str, str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    start, *values = row
    if query.unit is not None:
        out["start"] = _iso(start)
    for dimension, value in zip(query.dimensions, values, strict=True):
        if dimension == "key":
            out["key"] = value or None  # None: requests made without a key
            out["key_name"] = names.get(value) if value else None
        else:
            out[dimension] = value
    out.update(_counters(tally, estimated))
    return out


def _counters(tally: Tally, estimated: int) -> dict[str, Any]:
    return {
        "requests": tally.requests,
        "prompt_tokens": tally.prompt,
        "completion_tokens": tally.completion,
        "cached_tokens": tally.cached,
        "total_tokens": tally.prompt + tally.completion,
        "cost": round(tally.cost, 9),
        "estimated_requests": estimated,
    }


async def _key_names(request: web.Request) -> dict[str, str]:
    return {key.id: key.name for key in await request.app[API_KEYS].list()}


def _unit_name(unit: Unit) -> str:
    return next(name for name, u in _UNITS.items() if u == unit)


def _iso(seconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


assert set(UNIT_S) == set(_UNITS.values())


# Prices.


@routes.get("/api/server/prices", access="admin", answer=Listing)
async def prices(request: web.Request) -> web.Response:
    """List the price of each model per million tokens, and whether it is the config's."""
    return json_response({"success": True, "data": request.app[ACCOUNTANT].prices.listing()})


@routes.post("/api/server/prices", access="admin", body=NewPrice, answer=Done)
async def set_price(request: web.Request) -> web.Response:
    """Set a model's price per million prompt, completion and cached tokens."""
    body = await parse(request, NewPrice, "price")
    price = Price(prompt=body.prompt, completion=body.completion, cached=body.cached)
    book = request.app[ACCOUNTANT].prices
    await _store(request).put(body.model, price)
    book.stored[body.model] = price  # here at once; other processes within seconds
    return json_response({"success": True, "msg": f"price of {body.model!r} set"})


@routes.delete("/api/server/prices", access="admin", answer=Done)
async def delete_price(request: web.Request) -> web.Response:
    """Remove the price set for ?model= (the config file's, if any, applies again)."""
    model = request.query.get("model", "")
    if not model:
        raise InvalidRequest("say which price to remove: DELETE /api/server/prices?model=NAME")
    book = request.app[ACCOUNTANT].prices
    if not await _store(request).delete(model):
        raise NotFound(
            f"no price was set for {model[:100]!r} through the API; GET /api/server/prices "
            "lists the prices and where each comes from"
        )
    book.stored.pop(model, None)
    fallback = "the config file's price applies" if model in book.configured else "it has none"
    return json_response({"success": True, "msg": f"price of {model!r} removed; {fallback}"})


def _store(request: web.Request) -> PriceStore:
    settings = request.app[SETTINGS]
    return PriceStore(request.app[USAGE].redis, settings.key_prefix)
