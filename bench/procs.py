"""Child processes of a benchmark run: start pinned, watch CPU and memory, always stop.

Every child starts in its own session, so its process group can be killed whole and its CPU
counted whole (nginx's workers, or the processes of `gateway serve --processes N`, included).
On Linux it starts with PR_SET_PDEATHSIG, so it dies with the benchmark even if the benchmark
itself is killed outright. `Processes.stop_all` is called from a `finally`.
"""

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(RuntimeError):
    """A part of the benchmark could not be started or measured."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def pinning_available() -> bool:
    """Return True when `taskset` exists and there are at least two CPUs to split."""
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """Prefix `cmd` with `taskset -c cpu` (no prefix when `cpu` is None)."""
    if cpu is None:
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Child:
    """One started process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_s(self) -> float:
        """Return user+sys CPU seconds used so far by the group, reaped children included."""
        return sum(_stat_cpu_s(pid) for pid in _group_pids(self.pid))

    def rss_bytes(self) -> int:
        """Return the resident memory of every process of the group."""
        return sum(_rss_bytes(pid) for pid in _group_pids(self.pid))


@dataclass
class Processes:
    """Starts children into a log dir and stops every one of them, whatever happens."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path = _REPO,
    ) -> Child:
        """Start `cmd` in `cwd` (`python -m` imports from there first), its output to the log."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        return child

    def run(self, name: str, cmd: Sequence[str], *, timeout_s: float) -> tuple[int, str]:
        """Run `cmd` to its end (killed after `timeout_s`); return its exit code and output."""
        child = self.start(name, cmd)
        try:
            code = child.popen.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{name} did not finish within {timeout_s:g}s") from exc
        finally:
            self.stop(child, timeout_s=2.0)
        return code, child.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, child: Child, *, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Signal the child's group, wait, then SIGKILL the group if anything is left."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        try:
            child.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(f"bench: {child.name} ignored {signal.Signals(sig).name}; killing it")
        # Group members can outlive the leader (nginx workers): kill whatever remains.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(5.0)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child, timeout_s=5.0)


def wait_http(child: Child, url: str, *, timeout_s: float = 30.0) -> None:
    """Wait until `url` answers any HTTP status; fail early if the child exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(
                f"{child.name} exited with code {child.popen.returncode} at start:\n"
                f"{child.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not answer on {url} within {timeout_s:g}s ({last})")


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """Return /proc/PID/stat from field 3 (state) on; the name may hold spaces."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _stat_cpu_s(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # Fields 14-17 (utime, stime, cutime, cstime) in clock ticks; the list starts at field 3.
    # A reaped child leaves /proc, so its time only shows in its parent's cutime and cstime.
    return sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
