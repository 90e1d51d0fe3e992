"""The measured rows: medians over rounds, the printed table and the JSON file."""

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadResult


@dataclass(frozen=True, slots=True)
class Sample:
    """One load run against one target, with the CPU its server used meanwhile."""

    result: LoadResult
    cpu_s: float  # user+sys seconds of the server under test (upstream for `direct`)

    @property
    def cpu_us_per_req(self) -> float:
        return 1e6 * self.cpu_s / self.result.requests if self.result.requests else 0.0

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.result.duration_s if self.result.duration_s else 0.0


@dataclass
class Row:
    """A target at a connection count, measured once per round."""

    name: str
    what: str
    connections: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.name} at {self.connections}"

    def median(self, metric: str) -> float:
        values = [_metric(sample, metric) for sample in self.samples]
        return statistics.median(values) if values else 0.0

    def spread_pct(self) -> float:
        """Return (max - min) / median of req/s over the rounds, in %."""
        rates = [sample.result.rps for sample in self.samples]
        middle = statistics.median(rates) if rates else 0.0
        return 100.0 * (max(rates) - min(rates)) / middle if middle else 0.0

    def errors(self) -> int:
        return sum(sample.result.errors for sample in self.samples)

    def as_dict(self, floor_rps: float | None) -> dict[str, Any]:
        rps = self.median("rps")
        return {
            "row": self.name,
            "what": self.what,
            "connections": self.connections,
            "rps": round(rps, 1),
            "p50_ms": round(self.median("p50_ms"), 3),
            "p99_ms": round(self.median("p99_ms"), 3),
            "cpu_us_per_req": round(self.median("cpu_us_per_req"), 1),
            "cpu_pct": round(self.median("cpu_pct"), 1),
            "x_bare": round(rps / floor_rps, 3) if floor_rps else None,
            "rps_spread_pct": round(self.spread_pct(), 1),
            "errors": self.errors(),
            "samples": [{**s.result.as_dict(), "cpu_s": round(s.cpu_s, 3)} for s in self.samples],
        }


def _metric(sample: Sample, metric: str) -> float:
    if metric == "cpu_us_per_req":
        return sample.cpu_us_per_req
    if metric == "cpu_pct":
        return sample.cpu_pct
    if metric == "rps":
        return sample.result.rps
    value: float = getattr(sample.result, metric)
    return value


def floor_rps(rows: list[Row], connections: int) -> float | None:
    """Return the bare proxy's median req/s at `connections`, the 1.00 of the ratio column."""
    for row in rows:
        if row.name == "bare" and row.connections == connections:
            return row.median("rps") or None
    return None


def table(rows: list[Row]) -> str:
    """Render the rows as the aligned text table printed at the end of a run."""
    rounds = max((len(row.samples) for row in rows), default=1)
    width = max((len(row.name) + 1 for row in rows), default=9)
    header = (
        f"{'row':<{width}}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/req':>12}{'CPU %':>7}{'x bare':>8}{'errors':>8}"
    )
    if rounds > 1:
        header += f"{'req/s spread':>14}"
    lines = [header, "-" * len(header)]
    for row in rows:
        data = row.as_dict(floor_rps(rows, row.connections))
        ratio = f"{data['x_bare']:.2f}" if data["x_bare"] is not None else "-"
        line = (
            f"{row.name:<{width}}{row.connections:>6}{data['rps']:>10.0f}{data['p50_ms']:>9.2f}"
            f"{data['p99_ms']:>9.2f}{data['cpu_us_per_req']:>12.0f}{data['cpu_pct']:>7.0f}"
            f"{ratio:>8}{data['errors']:>8}"
        )
        if rounds > 1:
            line += f"{data['rps_spread_pct']:>13.0f}%"
        lines.append(line)
    return "\n".join(lines)


def legend(rows: list[Row]) -> str:
    """Render what each row of the table measures, one line per row name."""
    whats = {row.name: row.what for row in rows}
    width = max((len(name) + 2 for name in whats), default=9)
    return "\n".join(f"  {name:<{width}}{what}" for name, what in whats.items())


def versus(rows: list[Row], ours: str, theirs: str, connections: int) -> dict[str, float] | None:
    """Return `ours` over `theirs` in req/s, and `theirs` over `ours` in CPU per request."""
    mine, peer = _find(rows, ours, connections), _find(rows, theirs, connections)
    if mine is None or peer is None:
        return None
    rps, cpu = mine.median("rps"), mine.median("cpu_us_per_req")
    peer_rps, peer_cpu = peer.median("rps"), peer.median("cpu_us_per_req")
    if not (rps and cpu and peer_rps and peer_cpu):
        return None
    return {"rps_x": round(rps / peer_rps, 1), "cpu_per_req_x_less": round(peer_cpu / cpu, 1)}


def against_baseline(
    rows: list[Row], current: str, baseline: str, connections: int
) -> dict[str, Any] | None:
    """Return the medians of `current` and `baseline` at `connections`, and current / baseline."""
    now, before = _find(rows, current, connections), _find(rows, baseline, connections)
    if now is None or before is None:
        return None
    rps, cpu = now.median("rps"), now.median("cpu_us_per_req")
    rps_before, cpu_before = before.median("rps"), before.median("cpu_us_per_req")
    return {
        "row": current,
        "baseline_row": baseline,
        "connections": connections,
        "rps": round(rps, 1),
        "baseline_rps": round(rps_before, 1),
        "rps_ratio": round(rps / rps_before, 3) if rps_before else None,
        "cpu_us_per_req": round(cpu, 1),
        "baseline_cpu_us_per_req": round(cpu_before, 1),
        "cpu_us_per_req_ratio": round(cpu / cpu_before, 3) if cpu_before else None,
    }


def _find(rows: list[Row], name: str, connections: int) -> Row | None:
    return next((r for r in rows if r.name == name and r.connections == connections), None)


def pair_line(pair: dict[str, Any], width: int) -> str:
    """Render one current/baseline pair: req/s and CPU per request, and their ratios."""
    label = f"{pair['row']} at {pair['connections']}"
    rps_x, cpu_x = pair["rps_ratio"], pair["cpu_us_per_req_ratio"]
    return (
        f"  {label:<{width}}  req/s {pair['rps']:>6.0f} vs {pair['baseline_rps']:>6.0f} = "
        f"{_ratio(rps_x):<17}  CPU us/req {pair['cpu_us_per_req']:>5.0f} vs "
        f"{pair['baseline_cpu_us_per_req']:>5.0f} = {_ratio(cpu_x)}"
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x ({100 * (value - 1):+.1f}%)"


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write `document` to `path` (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
