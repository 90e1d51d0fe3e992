"""One benchmark run: a work dir, its processes and an embedded Redis, all stopped at the end."""

import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench.procs import BenchError, Processes
from registry import EmbeddedRedis, EmbeddedRedisError


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_session(
    name: str, run: Callable[[Processes, EmbeddedRedis], int], *, keep_logs: bool = False
) -> int:
    """Call `run` with fresh processes and Redis; stop everything on return, error or signal."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    workdir = Path(tempfile.mkdtemp(prefix=f"llmgw-{name.replace('.', '-')}-"))
    procs = Processes(workdir)
    redis = EmbeddedRedis(workdir / "redis", persist=False)
    try:
        return run(procs, redis)
    except (BenchError, EmbeddedRedisError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        # Cleanup is bounded (seconds per child); a second Ctrl-C must not cut it short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        procs.stop_all()
        redis.stop()
        if keep_logs:
            print(f"{name}: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
