"""`--profile`: run a fresh gateway under the row load and find where its time goes.

py-spy attaches to the gateway from outside for the length of one row (no code change, and
it runs on the load generator's CPU, not the gateway's). When py-spy cannot be installed or
may not read the process, the gateway is started inside cProfile instead
(`bench.cprofile_gateway`), which costs it far more per call but needs nothing.
"""

import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import profile_stats, stack
from bench.drivers import Driver
from bench.load import LoadResult
from bench.procs import BenchError, Processes, pinned

TOP = 15


@dataclass(frozen=True, slots=True)
class ProfileSetup:
    """What the profile phase needs from the run."""

    procs: Processes
    driver: Driver
    redis_url: str
    connections: int
    duration_s: int
    server_cpu: int | None
    load_cpu: int | None


def profile_gateway(setup: ProfileSetup, profiler: str, results: Path) -> dict[str, Any]:
    """Profile with `profiler` ("auto", "py-spy" or "cprofile"); return the findings."""
    results.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if profiler in ("auto", "py-spy"):
        binary, note = profile_stats.find_py_spy(install=True)
        notes.append(note)
        if binary is not None:
            found = _with_py_spy(setup, binary, results)
            if isinstance(found, dict):
                return {**found, "notes": notes}
            notes.append(found)
        if profiler == "py-spy":
            raise BenchError("; ".join(notes))
        print(f"bench: py-spy is unusable ({notes[-1]}); profiling with cProfile instead")
    return {**_with_cprofile(setup, results), "notes": notes}


def _with_py_spy(setup: ProfileSetup, binary: str, results: Path) -> dict[str, Any] | str:
    """Sample the gateway with py-spy; return the findings, or why py-spy failed."""
    procs = setup.procs
    output = results / "profile-pyspy.collapsed"
    output.unlink(missing_ok=True)
    gateway = stack.start_gateway(procs, setup.redis_url, setup.server_cpu, name="gateway-pyspy")
    stack.check_gateway(gateway)
    cmd = profile_stats.py_spy_command(binary, gateway.child.pid, setup.duration_s, output)
    spy = procs.start("py-spy", pinned(cmd, setup.load_cpu))
    time.sleep(0.5)
    if not spy.alive() and spy.popen.returncode != 0:
        procs.stop(gateway.child, sig=signal.SIGINT)
        return f"py-spy could not sample the gateway: {spy.log_tail(3)}"
    result = setup.driver.run(gateway, setup.connections, setup.duration_s)
    # py-spy stops by itself after --duration; SIGINT also makes it write what it has.
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.popen.wait(5.0)
    procs.stop(spy, sig=signal.SIGINT, timeout_s=30.0)
    procs.stop(gateway.child, sig=signal.SIGINT)
    if not output.exists() or output.stat().st_size == 0:
        return f"py-spy wrote no profile: {spy.log_tail(3)}"
    entries, files, samples = profile_stats.top_from_collapsed(output, TOP)
    title = (
        f"py-spy: {samples} samples of the busy gateway at {setup.connections} connections "
        f"({result.rps:.0f} req/s while sampled); top {TOP} by own time"
    )
    return _save("py-spy", title, entries, files, output, result, results)


def _with_cprofile(setup: ProfileSetup, results: Path) -> dict[str, Any]:
    """Run a gateway inside cProfile under load; it writes the stats when it exits."""
    procs = setup.procs
    output = results / "profile-cprofile.prof"
    output.unlink(missing_ok=True)
    gateway = stack.start_gateway(
        procs, setup.redis_url, setup.server_cpu, name="gateway-cprofile", cprofile_to=output
    )
    stack.check_gateway(gateway)
    result = setup.driver.run(gateway, setup.connections, setup.duration_s)
    procs.stop(gateway.child, sig=signal.SIGINT, timeout_s=30.0)
    if not output.exists():
        raise BenchError(f"the cProfile gateway wrote no stats:\n{gateway.child.log_tail()}")
    entries, total_s = profile_stats.top_from_pstats(output, TOP)
    title = (
        f"cProfile: {total_s:.1f} s of gateway time, start-up included "
        f"({result.rps:.0f} req/s under the profiler); top {TOP} by own time"
    )
    return _save("cprofile", title, entries, [], output, result, results)


def _save(
    kind: str,
    title: str,
    entries: list[profile_stats.Entry],
    files: list[profile_stats.Entry],
    output: Path,
    result: LoadResult,
    results: Path,
) -> dict[str, Any]:
    text = profile_stats.format_top(entries, title)
    if files:
        text += "\n\n" + profile_stats.format_files(files)
    summary = results / "profile-top.txt"
    summary.write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"profile saved to {stack.shown(output)}, summary to {stack.shown(summary)}")
    return {
        "profiler": kind,
        "file": stack.shown(output),
        "rps_while_profiled": round(result.rps, 1),
        "top_by_own_time": [
            {
                "function": e.function,
                "own_pct": round(e.own_pct, 2),
                "total_pct": round(e.total_pct, 2),
            }
            for e in entries
        ],
        "own_pct_by_file": {e.function: round(e.own_pct, 2) for e in files},
    }
