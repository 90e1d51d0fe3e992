"""The load generator of a run: wrk with a Lua script, or `bench.load` in a subprocess."""

from dataclasses import dataclass
from pathlib import Path

from bench import stack, wrk
from bench.load import LoadResult, run_subprocess
from bench.procs import BenchError, Processes


@dataclass(frozen=True, slots=True)
class Driver:
    """Runs one fixed-time load against a URL, pinned to `cpu` when given."""

    kind: str
    procs: Processes
    cpu: int | None
    script: Path | None = None

    def run(self, url: str, connections: int, duration_s: int) -> LoadResult:
        if self.script is not None:
            return wrk.run_wrk(self.procs, url, self.script, connections, duration_s, cpu=self.cpu)
        return run_subprocess(
            self.procs, url, stack.CHAT_BODY, connections, duration_s, cpu=self.cpu
        )


def choose_driver(choice: str, procs: Processes, cpu: int | None) -> Driver:
    """Return wrk when installed (or required), else the Python generator."""
    if choice == "wrk" and not wrk.available():
        raise BenchError("--load wrk: wrk is not on PATH (apt-get install wrk)")
    if choice in ("auto", "wrk") and wrk.available():
        script = wrk.write_script(procs.log_dir / "post.lua", stack.CHAT_BODY)
        return Driver("wrk", procs, cpu, script)
    if choice == "auto":
        print("bench: wrk is not on PATH; using the Python load generator (bench/load.py)")
    return Driver("python", procs, cpu)
