"""The load generator of a run: wrk with a Lua script, or `bench.load` in a subprocess."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.load import LoadResult, run_subprocess
from bench.procs import BenchError, Processes
from bench.stack import Target


@dataclass(frozen=True, slots=True)
class Driver:
    """Runs one fixed-time load of a target's body against its URL, pinned to `cpu` if given."""

    kind: str
    procs: Processes
    cpu: int | None
    script_dir: Path | None = None  # where wrk's Lua scripts go; None: the Python generator

    def run(self, target: Target, connections: int, duration_s: int) -> LoadResult:
        if self.script_dir is not None:
            script = _script(self.script_dir, target.body)
            return wrk.run_wrk(
                self.procs, target.url, script, connections, duration_s, cpu=self.cpu
            )
        return run_subprocess(
            self.procs, target.url, target.body, connections, duration_s, cpu=self.cpu
        )


def _script(directory: Path, body: bytes) -> Path:
    """Return the Lua script POSTing `body`, written on first use (one per distinct body)."""
    path = directory / f"post-{hashlib.sha256(body).hexdigest()[:12]}.lua"
    return path if path.exists() else wrk.write_script(path, body)


def choose_driver(choice: str, procs: Processes, cpu: int | None) -> Driver:
    """Return wrk when installed (or required), else the Python generator."""
    if choice == "wrk" and not wrk.available():
        raise BenchError("--load wrk: wrk is not on PATH (apt-get install wrk)")
    if choice in ("auto", "wrk") and wrk.available():
        return Driver("wrk", procs, cpu, procs.log_dir)
    if choice == "auto":
        print("bench: wrk is not on PATH; using the Python load generator (bench/load.py)")
    return Driver("python", procs, cpu)
