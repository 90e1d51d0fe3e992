"""`--processes N`: N gateway processes sharing one port (SO_REUSEPORT) and one Redis.

The parent starts the embedded Redis when no URL is configured (once, for all) and restarts
it if it dies; it starts the children with the parent's settings, restarts a child that dies,
and on SIGINT/SIGTERM stops them all, then the embedded Redis. Each child is tied to the
parent (PR_SET_PDEATHSIG on Linux), so none outlives a parent that is killed outright.

A child reads its settings as JSON from its stdin, secrets included: a command line is
readable by every user of the machine, and a file would have to be kept for restarts.
"""

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from pydantic import SecretStr

from gateway.metrics import EMBEDDED_RESTARTS_FILE, record_embedded_restarts
from gateway.settings import ENV_PREFIX, Settings
from registry import EmbeddedRedis, EmbeddedRedisError

log = logging.getLogger(__name__)

CHILD_FLAG = "--child"  # this process is a child: its settings come on stdin


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(settings: Settings) -> int:
    """Run `settings.processes` gateway processes until SIGINT or SIGTERM."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        try:
            embedded.start()
        except EmbeddedRedisError as exc:
            log.error("%s", exc)
            return 1
        log.info(
            "no Redis URL configured: started embedded Redis (valkey) on %s, data in %s",
            embedded.url,
            settings.data_dir,
        )
    port = settings.port or _free_port(settings.host)
    # Metrics of all processes are summed at scrape time from files in one directory
    # (prometheus_client's multiprocess mode, switched on by the environment variable).
    metrics_dir = settings.metrics_multiproc_dir
    own_metrics_dir = metrics_dir is None
    if metrics_dir is None:
        metrics_dir = Path(tempfile.mkdtemp(prefix="llmgw-metrics-"))
    # The children's settings are complete; GATEWAY_* variables (secrets among them) stay out
    # of their environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    child = settings.model_copy(
        update={
            "redis_url": embedded.url if embedded else settings.redis_url,
            "port": port,
            "metrics_multiproc_dir": metrics_dir,
        }
    )
    payload = child_settings(child)
    if embedded is not None:
        record_embedded_restarts(metrics_dir, embedded.restarts)
    else:  # a count left by an earlier run on the embedded Redis is not this Redis's
        (metrics_dir / EMBEDDED_RESTARTS_FILE).unlink(missing_ok=True)
    children: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(settings.processes):
            children.append(_start_child(payload, env))
        log.info(
            "llm-gateway: %d processes listening on http://%s:%d",
            settings.processes,
            settings.host,
            port,
        )
        restarts: list[float] = []
        while not stopping:
            time.sleep(0.2)
            if embedded is not None and not stopping and embedded.watch():
                record_embedded_restarts(metrics_dir, embedded.restarts)
            for index, process in enumerate(children):
                if stopping or process.poll() is None:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 5 * settings.processes:
                    log.error("gateway processes keep dying; giving up")
                    return 1
                log.warning(
                    "gateway process %d exited (%s); restarting it", process.pid, process.returncode
                )
                children[index] = _start_child(payload, env)
        return 0
    finally:
        for process in children:
            if process.poll() is None:
                process.terminate()
        for process in children:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if embedded is not None:
            embedded.stop()
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def child_settings(settings: Settings) -> bytes:
    """Return `settings` as the JSON a child reads, secrets in clear (the JSON hides them)."""
    data = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    return json.dumps(data).encode()


def read_child_settings(raw: bytes) -> Settings:
    """Return the settings a parent sent with `child_settings`."""
    return Settings.model_validate_json(raw)


def _start_child(payload: bytes, env: dict[str, str]) -> "subprocess.Popen[bytes]":
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", CHILD_FLAG],
        stdin=subprocess.PIPE,
        preexec_fn=preexec,
        env=env,
    )
    assert process.stdin is not None
    # A few kilobytes: the pipe's buffer takes them whole, so this does not wait for the child.
    try:
        process.stdin.write(payload)
        process.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; the loop sees it exit and starts another
    return process


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def processes_arg(value: str) -> int:
    """Parse `--processes`: a number, or `auto` for one per CPU."""
    if value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    return int(value)
