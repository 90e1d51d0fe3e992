"""The printed summary of a scale run: one line per measure, then the load rows."""

from typing import Any

from bench.report import Row

_MIB = 2**20


def render(doc: dict[str, Any], rows: list[Row]) -> str:
    """Return the text table of a finished run's document."""
    s = doc["settings"]
    reg, up, mem = doc["register"], doc["start_up"], doc["start_up"]["rss_per_worker_bytes"]
    empty, full, follower = up["empty"], up["full_probe_leader"], up["full_follower"]
    lines = [
        f"registry: {s['workers']} workers over {s['models']} models; the load model "
        f"'{s['load_model']}' has {s['pool_size']} workers in both registries",
        "",
        _line(
            "1 register via HTTP",
            f"{reg['registered']} in {reg['total_s']:.2f} s = {reg['per_s']:.0f}/s at "
            f"{reg['concurrency']} clients (p50 {reg['p50_ms']:.1f} ms, p99 "
            f"{reg['p99_ms']:.1f} ms), {reg['failures']} failed, gateway CPU "
            f"{reg['gateway_cpu_ms_per_registration']:.2f} ms each",
        ),
        _line("2 start-up, empty registry", f"ready {empty['ready_s']:.2f} s"),
        _line("  start-up, full (probe leader)", _start(full)),
        _line("  start-up, full (follower)", _start(follower)),
        _line(
            "3 RSS empty / full follower / leader",
            f"{empty['rss_ready_mib']:.1f} / {follower['rss_ready_mib']:.1f} / "
            f"{full['rss_ready_mib']:.1f} MiB at ready ({full['rss_listed_mib']:.1f} after "
            "listing)",
        ),
        _line(
            "  RSS per worker",
            f"follower {mem['follower'] / 1024:.1f} KiB, probe leader "
            f"{mem['probe_leader'] / 1024:.1f} KiB ({mem['probe_leader_after_listing'] / 1024:.1f}"
            " after listing)",
        ),
        _line(
            "  Redis used_memory for the registry",
            f"{reg['redis_used_memory_delta_bytes'] / _MIB:.1f} MiB = "
            f"{reg['redis_bytes_per_worker'] / 1024:.2f} KiB per worker",
        ),
    ]
    for index, pick in enumerate(doc["pick"]):
        lines.append(
            _line(
                f"{'4' if index == 0 else ' '} pick, {pick['label']}",
                f"{pick['pick_ns_median'] / 1000:.2f} us/pick (pool {pick['pool_size']}), "
                f"load {pick['load_ms']:.0f} ms, put {pick['apply_put_us']:.0f} us",
            )
        )
    idle, leader = doc["idle_cpu_pct"], doc["probe_leader"]
    lines.append(
        _line(
            "5 idle CPU: full / follower / small",
            f"{idle['full']:.0f}% / {idle['follower']:.0f}% / {idle['small']:.0f}% of a core; "
            f"probe lease: {leader['before_idle']}, {leader['after_load']} after the load",
        )
    )
    ratio = doc["load"]["rps_ratio_full_over_small"]
    lines.append(_line("  req/s full / small", f"{ratio:.2f}" if ratio else "-"))
    seq, burst = doc["convergence"]["sequential"], doc["convergence"]["burst"]
    lines.append(
        _line(
            "6a A -> visible on B, sequential",
            f"p50 {seq['p50_ms']:.1f} ms, p99 {seq['p99_ms']:.1f} ms, max {seq['max_ms']:.1f} ms"
            f" over {seq['seen']} (B's listing p50 {seq['listing_on_b_p50_ms']:.1f} ms), "
            f"{seq['not_seen_in_time']} not seen",
        )
    )
    for burst in (doc["convergence"]["burst"], doc["convergence"]["burst_64_connections"]):
        visible = burst["visible_on_b_s"]
        lines.append(
            _line(
                f"6b burst of {burst['registrations']} on {burst['connections']} conns",
                f"A answered all {burst['all_answered_by_a_s']:.2f} s (p50 "
                f"{burst['a_latency']['p50_ms'] / 1000:.2f} s), B listed all "
                f"{burst['accepted_by_a']} accepted "
                + (f"{visible:.2f} s" if visible is not None else "never (in time)")
                + f" after the first was sent; {burst['a_latency']['failures']} refused by A",
            )
        )
    lines += ["", _load_table(rows)]
    return "\n".join(lines)


def _start(start: dict[str, Any]) -> str:
    return (
        f"ready {start['ready_s']:.2f} s, lists all {start['workers']} at "
        f"{start['listed_s']:.2f} s (listing {start['listing_s']:.2f} s, "
        f"{start['listing_bytes'] / _MIB:.1f} MiB)"
    )


def _line(name: str, value: str) -> str:
    return f"{name:<38} {value}"


def _load_table(rows: list[Row]) -> str:
    header = (
        f"{'registry':<10}{'conns':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/req':>12}{'errors':>8}{'req/s spread':>14}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        data = row.as_dict(None)
        lines.append(
            f"{row.name:<10}{row.connections:>6}{data['rps']:>9.0f}{data['p50_ms']:>9.2f}"
            f"{data['p99_ms']:>9.2f}{data['cpu_us_per_req']:>12.0f}{data['errors']:>8}"
            f"{data['rps_spread_pct']:>13.0f}%"
        )
    return "\n".join(lines)
