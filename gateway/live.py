"""Live figures for the dashboard: recent calls per worker and model, an hour of history.

Everything here is counted in this process only, in memory, from what its own requests saw
(with `--processes N` each process counts its own share). Recording a call costs a few
integer updates and two array stores: no allocation per call beyond Python's own ints and
floats, and no lock.

- `Window`: calls and failures over the last minute (12 buckets of 5 s) and the latencies of
  the last `SAMPLES` calls, with the time each ended, for p50/p99 of the last minute.
- `History`: an hour of per-minute buckets (calls, failures, a latency histogram) for a chart.
- `Live`: a `Window` and a `History` per model, fed with every answered inference request.

Times are `time.perf_counter()` seconds (the clock the request path already reads); `Live`
turns them into wall-clock times when it reports.
"""

import bisect
import math
import time
from array import array
from dataclasses import dataclass
from typing import Any

SAMPLES = 128  # latencies kept per worker or model: enough for a p99 of the last minute
_SLOT_S = 5.0
_SLOTS = 12  # 12 x 5 s = the last minute
WINDOW_S = _SLOT_S * _SLOTS
MINUTES = 60
# Histogram bounds of the per-minute latency: 0.5 ms to ~110 s in steps of 2^(1/4), so a
# percentile read from it is within ~10% of the true one.
_BOUNDS_S = tuple(0.0005 * 2 ** (i / 4) for i in range(72))


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Window:
    """Calls and failures of the last minute, and the latencies of the last few calls."""

    __slots__ = ("_born", "_calls", "_ends", "_failures", "_latencies", "_next", "_tick")

    def __init__(self, now: float) -> None:
        self._born = now
        self._tick = int(now // _SLOT_S)
        self._calls = [0] * _SLOTS
        self._failures = [0] * _SLOTS
        self._latencies = array("f", bytes(4 * SAMPLES))
        self._ends = array("d", bytes(8 * SAMPLES))  # 0.0: no sample in that place yet
        self._next = 0

    def record(self, ended: float, seconds: float, ok: bool) -> None:
        """Count one call that ended at `ended` after `seconds`."""
        tick = int(ended // _SLOT_S)
        if tick != self._tick:
            self._advance(tick)
        slot = tick % _SLOTS
        self._calls[slot] += 1
        if not ok:
            self._failures[slot] += 1
        place = self._next
        self._latencies[place] = seconds
        self._ends[place] = ended
        self._next = (place + 1) % SAMPLES

    def _advance(self, tick: int) -> None:
        # Buckets between the last call and this one saw nothing: zero them (at most all 12).
        gap = tick - self._tick
        if gap > 0:
            for step in range(1, min(gap, _SLOTS) + 1):
                slot = (self._tick + step) % _SLOTS
                self._calls[slot] = self._failures[slot] = 0
            self._tick = tick

    def summary(self, now: float) -> dict[str, Any]:
        """Calls per second, failure ratio and p50/p99 latency (ms) over the last minute."""
        self._advance(int(now // _SLOT_S))
        calls, failures = sum(self._calls), sum(self._failures)
        # The buckets cover the current partial one and 11 whole ones, or less for a new one
        # (counted as at least one bucket, so a first call is not a burst of calls per second).
        span_s = max(_SLOT_S, min((_SLOTS - 1) * _SLOT_S + (now % _SLOT_S), now - self._born))
        recent = sorted(
            latency
            for latency, end in zip(self._latencies, self._ends, strict=True)
            if end and now - end <= WINDOW_S
        )
        return {
            "calls": calls,
            "failures": failures,
            "per_s": round(calls / span_s, 3),
            "error_rate": round(failures / calls, 4) if calls else None,
            "p50_ms": round(_quantile(recent, 0.5) * 1000, 1) if recent else None,
            "p99_ms": round(_quantile(recent, 0.99) * 1000, 1) if recent else None,
            "samples": len(recent),
        }


class _Minute:
    __slots__ = ("calls", "failures", "histogram", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls = 0
        self.failures = 0
        self.histogram = array("I", bytes(4 * (len(_BOUNDS_S) + 1)))

    def quantile(self, q: float) -> float | None:
        if not self.calls:
            return None
        rank, seen, place = max(1, math.ceil(q * self.calls)), 0, 0
        for count in self.histogram:
            seen += count
            if seen >= rank:
                break
            place += 1
        # The geometric middle of the bucket (its bound for the first and the last one).
        if place == 0 or place >= len(_BOUNDS_S):
            return _BOUNDS_S[min(place, len(_BOUNDS_S) - 1)]
        return math.sqrt(_BOUNDS_S[place] * _BOUNDS_S[place - 1])


class History:
    """The last hour, minute by minute: calls, failures and latency percentiles."""

    __slots__ = ("_current", "_minutes")

    def __init__(self) -> None:
        self._minutes: list[_Minute | None] = [None] * MINUTES
        self._current: _Minute | None = None

    def record(self, ended: float, seconds: float, ok: bool) -> None:
        """Count one call that ended at `ended` after `seconds`."""
        minute = self._current
        index = int(ended // 60)
        if minute is None or minute.index != index:
            # Once a minute at most: a new bucket replaces the one of an hour ago.
            minute = self._current = self._minutes[index % MINUTES] = _Minute(index)
        minute.calls += 1
        if not ok:
            minute.failures += 1
        minute.histogram[bisect.bisect_left(_BOUNDS_S, seconds)] += 1

    def last_used(self) -> int | None:
        """The minute index of the last call, or None."""
        return self._current.index if self._current is not None else None

    def series(self, now: float) -> dict[str, list[Any]]:
        """The last `MINUTES` minutes, oldest first (the last one is the current, partial one)."""
        last = int(now // 60)
        found = {m.index: m for m in self._minutes if m is not None and m.index > last - MINUTES}
        calls, failures, p50, p99 = [], [], [], []
        for index in range(last - MINUTES + 1, last + 1):
            minute = found.get(index)
            calls.append(minute.calls if minute else 0)
            failures.append(minute.failures if minute else 0)
            low = minute.quantile(0.5) if minute else None
            high = minute.quantile(0.99) if minute else None
            p50.append(round(low * 1000, 1) if low is not None else None)
            p99.append(round(high * 1000, 1) if high is not None else None)
        return {"calls": calls, "failures": failures, "p50_ms": p50, "p99_ms": p99}


@dataclass(slots=True)
class ModelLive:
    """What this process saw of one model's requests."""

    window: Window
    history: History


class Live:
    """Per-model live figures of this process, fed by every answered inference request."""

    def __init__(self) -> None:
        self._models: dict[str, ModelLive] = {}
        # perf_counter() + offset = time.time(), taken once: the request path reads one clock.
        self._wall_offset = time.time() - time.perf_counter()

    def request(self, model: str, ended: float, seconds: float, ok: bool) -> None:
        """Count a request for `model` (a registered one: names are bounded by the registry)."""
        entry = self._models.get(model)
        if entry is None:
            entry = self._models[model] = ModelLive(Window(ended), History())
        entry.window.record(ended, seconds, ok)
        entry.history.record(ended, seconds, ok)

    def summary(self, model: str, now: float) -> dict[str, Any] | None:
        entry = self._models.get(model)
        return entry.window.summary(now) if entry is not None else None

    def wall(self, perf: float) -> float:
        """Turn a perf_counter() time into a time.time() one."""
        return perf + self._wall_offset

    def history(self, registered: set[str], now: float) -> dict[str, Any]:
        """Every model's last hour, per minute; models gone and idle for an hour are dropped."""
        last = int(now // 60)
        for model in [m for m in self._models if m not in registered]:
            used = self._models[model].history.last_used()
            if used is None or used <= last - MINUTES:
                del self._models[model]
        return {
            "minute_s": 60,
            "first_minute_at": (last - MINUTES + 1) * 60 + self._wall_offset,
            "now": self.wall(now),
            "models": [
                {"model_name": model, **self._models[model].history.series(now)}
                for model in sorted(self._models)
            ],
        }


def idle_summary() -> dict[str, Any]:
    """The summary of a worker or model that has had no call in this process."""
    return {
        "calls": 0,
        "failures": 0,
        "per_s": 0.0,
        "error_rate": None,
        "p50_ms": None,
        "p99_ms": None,
        "samples": 0,
    }
