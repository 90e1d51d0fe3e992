"""What an API key spent, as its token limits and money budget count it, on Redis's clock.

One hash per key (`Keys.spend`): tokens this minute and last (`w`, `n`, `p`: a sliding window
like the request limit's), tokens today (`d`, `dt`: the UTC day), and cost in the budget's
period (`b`, `bc`: the UTC day, the week from Monday, or the calendar month). The Lua below is
shared by the admission check (apikeys.py), the charge at the end of a limited key's request
(apikeys.py) and the usage flush that charges the other keys (usage.py), so all three agree
on the windows.
"""

import datetime
import math
from dataclasses import dataclass
from typing import Any, Literal

Period = Literal["day", "week", "month"]

DAY_MS = 86_400_000
# A spend hash lives on for this long after its last charge: past any budget period.
SPEND_TTL_MS = 40 * DAY_MS

# Lua functions: now_ms(); period_of(day, period) -> first day, first day of the next;
# charge(key, tokens, cost, now, period); over(key, now, tpm, tpd, budget, period) -> nil or
# {retry ms, which} (3 tokens per minute, 4 tokens per day, 5 budget).
LUA = (
    """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function period_of(day, period)
  if period == 'day' then return day, day + 1 end
  if period == 'week' then
    local first = day - (day + 3) % 7
    return first, first + 7
  end
  local y, m = civil_from_days(day)
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return days_from_civil(y, m, 1), days_from_civil(ny, nm, 1)
end
local function charge(key, tokens, cost, now, period)
  local s = redis.call('HMGET', key, 'w', 'n', 'd', 'b')
  local window = now - now % 60000
  local w = tonumber(s[1])
  if w == window then
    redis.call('HINCRBY', key, 'n', tokens)
  elseif w == window - 60000 then
    redis.call('HSET', key, 'w', window, 'n', tokens, 'p', tonumber(s[2]) or 0)
  else
    redis.call('HSET', key, 'w', window, 'n', tokens, 'p', 0)
  end
  local day = math.floor(now / 86400000)
  if tonumber(s[3]) == day then
    redis.call('HINCRBY', key, 'dt', tokens)
  else
    redis.call('HSET', key, 'd', day, 'dt', tokens)
  end
  local first = period_of(day, period)
  if tonumber(s[4]) == first then
    redis.call('HINCRBYFLOAT', key, 'bc', cost)
  else
    redis.call('HSET', key, 'b', first, 'bc', cost)
  end
  redis.call('PEXPIRE', key, """
    + str(SPEND_TTL_MS)
    + """)
end
local function over(key, now, tpm, tpd, budget, period)
  if tpm <= 0 and tpd <= 0 and budget <= 0 then return nil end
  local s = redis.call('HMGET', key, 'w', 'n', 'p', 'd', 'dt', 'b', 'bc')
  local day = math.floor(now / 86400000)
  if budget > 0 then
    local first, following = period_of(day, period)
    if tonumber(s[6]) == first and (tonumber(s[7]) or 0) >= budget then
      return {following * 86400000 - now, 5}
    end
  end
  if tpd > 0 and tonumber(s[4]) == day and (tonumber(s[5]) or 0) >= tpd then
    return {(day + 1) * 86400000 - now, 4}
  end
  if tpm > 0 then
    local window = now - now % 60000
    local w, cur, prev = tonumber(s[1]), 0, 0
    if w == window then
      cur, prev = tonumber(s[2]) or 0, tonumber(s[3]) or 0
    elseif w == window - 60000 then
      prev = tonumber(s[2]) or 0
    end
    if prev * (1 - (now - window) / 60000) + cur >= tpm then
      local retry = window + 60000 - now
      if cur < tpm and prev > 0 then
        retry = window + math.ceil(60000 * (1 - (tpm - cur) / prev)) - now
      end
      return {math.max(retry, 1), 3}
    end
  end
  return nil
end
"""
)


@dataclass(frozen=True, slots=True)
class Spend:
    """A key's spend now: tokens in the last minute (sliding), today, and cost this period."""

    tokens_last_minute: int
    tokens_today: int
    cost_this_period: float
    period: Period
    period_start: str  # the first UTC day of the period, ISO 8601

    def public(self) -> dict[str, Any]:
        return {
            "tokens_last_minute": self.tokens_last_minute,
            "tokens_today": self.tokens_today,
            "cost_this_period": round(self.cost_this_period, 9),
            "period": self.period,
            "period_start": self.period_start,
        }


def read_spend(fields: dict[bytes, bytes], now_ms: int, period: Period) -> Spend:
    """Read a spend hash as the Lua above would at `now_ms` (Redis's clock)."""

    def number(name: bytes) -> float | None:
        raw = fields.get(name)
        return float(raw) if raw is not None else None

    window = now_ms - now_ms % 60_000
    w, n, p = number(b"w"), number(b"n") or 0, number(b"p") or 0
    if w == window:
        last_minute = p * (1 - (now_ms - window) / 60_000) + n
    elif w == window - 60_000:
        last_minute = n * (1 - (now_ms - window) / 60_000)
    else:
        last_minute = 0
    day = now_ms // DAY_MS
    today = int(number(b"dt") or 0) if number(b"d") == day else 0
    first = period_start(day, period)
    cost = (number(b"bc") or 0.0) if number(b"b") == first else 0.0
    start = datetime.date(1970, 1, 1) + datetime.timedelta(days=first)
    return Spend(math.ceil(last_minute), today, cost, period, start.isoformat())


def period_start(day: int, period: Period) -> int:
    """The first day (days since 1970-01-01, UTC) of the period that holds `day`."""
    if period == "day":
        return day
    if period == "week":
        return day - (day + 3) % 7  # 1970-01-01 was a Thursday
    date = datetime.date(1970, 1, 1) + datetime.timedelta(days=day)
    return (date.replace(day=1) - datetime.date(1970, 1, 1)).days
