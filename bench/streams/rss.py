"""Resident memory of a process group over time, and the trend of a series."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.procs import BenchError, Child


@dataclass
class RssSeries:
    """(seconds since the first sample, bytes) pairs of one process group."""

    points: list[tuple[float, int]] = field(default_factory=list)

    def peak_bytes(self) -> int:
        return max((rss for _, rss in self.points), default=0)

    def slope_mib_per_min(self) -> float:
        """Return the least-squares slope of the series in MiB per minute (0 below 2 points)."""
        if len(self.points) < 2:
            return 0.0
        xs = [t for t, _ in self.points]
        ys = [rss / 2**20 for _, rss in self.points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var_x = sum((x - mean_x) ** 2 for x in xs)
        if var_x == 0:
            return 0.0
        cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
        return 60.0 * cov / var_x


def sample_while(
    watched: Child, running: Callable[[], bool], *, interval_s: float, timeout_s: float
) -> RssSeries:
    """Sample `watched`'s RSS every `interval_s` while `running()` is true, for `timeout_s` max."""
    series = RssSeries()
    started = time.monotonic()
    deadline = started + timeout_s
    while running():
        now = time.monotonic()
        if now > deadline:
            raise BenchError(f"still running after {timeout_s:g}s")
        series.points.append((now - started, watched.rss_bytes()))
        time.sleep(max(0.0, interval_s - (time.monotonic() - now)))
    return series


def fd_limit(child: Child) -> str:
    """Return the 'Max open files' soft limit the child's process got."""
    try:
        with open(f"/proc/{child.pid}/limits", encoding="ascii") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"
