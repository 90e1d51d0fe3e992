"""The spend windows in Lua (what limits check, on Redis's clock) agree with Python's."""

import datetime

import pytest
from redis.asyncio import Redis

from registry.spend import LUA, period_start
from registry.usage import Retention, plan

_PERIOD_OF = (
    LUA
    + "local first, following = period_of(tonumber(ARGV[1]), ARGV[2])\nreturn {first, following}"
)


def _day(date: datetime.date) -> int:
    return (date - datetime.date(1970, 1, 1)).days


@pytest.mark.parametrize("period", ["day", "week", "month"])
async def test_budget_periods_in_lua_are_the_calendars(redis: Redis, period: str) -> None:
    script = redis.register_script(_PERIOD_OF)
    start = datetime.date(2023, 12, 25)
    for offset in range(0, 800, 3):  # across month ends, a leap day and year ends
        date = start + datetime.timedelta(days=offset)
        first, following = await script(keys=[], args=[_day(date), period])
        assert first == period_start(_day(date), period)
        begins = datetime.date(1970, 1, 1) + datetime.timedelta(days=int(first))
        ends = datetime.date(1970, 1, 1) + datetime.timedelta(days=int(following))
        if period == "week":
            assert begins.weekday() == 0 and (ends - begins).days == 7
        elif period == "month":
            assert begins == date.replace(day=1)
            assert ends == (date.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
        assert begins <= date < ends


def test_the_usage_api_reads_few_buckets_and_coarser_ones_past_retention() -> None:
    keep = Retention(minute_s=2 * 86400, hour_s=35 * 86400, day_s=400 * 86400)
    now = 1_800_000_000 - 1_800_000_000 % 86400 + 12 * 3600  # noon
    since = now - 3 * 86400 - 3600 - 300  # three days, an hour and five minutes back
    buckets, first, last = plan(since, now, now, keep)
    units = [unit for unit, _ in buckets]
    # Minutes that old are gone: the hour holding `since` is read instead, then whole hours
    # to midnight, whole days, hours of today and no minutes (now is on the hour).
    assert units == ["h"] * 14 + ["d"] * 2 + ["h"] * 12  # 10:00-24:00, 2 days, 00:00-12:00
    assert first == since - since % 3600 and last == now
    recent, first, last = plan(now - 125, now - 5, now, keep)
    assert [unit for unit, _ in recent] == ["m", "m", "m"] and (first, last) == (now - 180, now)
    _, first, _ = plan(now - 40 * 86400, now, now, keep, unit="h")
    assert first >= now - 36 * 86400  # not past the hours kept
