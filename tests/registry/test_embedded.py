"""The embedded valkey: owner-only files on disk, and a server that dies is started again."""

import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from registry import EmbeddedRedis

SECRET = b"Bearer sk-worker-header-secret"


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """Run with the common umask 022, under which new files are world-readable by default."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    embedded = EmbeddedRedis(tmp_path / "data", persist=True)
    yield embedded
    embedded.stop()


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _until(check: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll `check` until it is truthy; fail after `timeout_s` (a hang guard)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


@pytest.mark.usefixtures("usual_umask")
@pytest.mark.parametrize("data_dir", ["new", "left open by an older gateway"])
def test_data_dir_and_every_file_in_it_are_private_to_the_owner(
    server: EmbeddedRedis, data_dir: str
) -> None:
    if data_dir != "new":
        server.data_dir.mkdir()
        os.chmod(server.data_dir, 0o755)
        for name in ("valkey.conf", "valkey.log"):
            (server.data_dir / name).write_text("old\n")
            os.chmod(server.data_dir / name, 0o644)
    server.start()
    client = redis.Redis(unix_socket_path=str(server.socket_path))
    client.set("worker-header", SECRET)
    client.close()
    server.stop()  # flushes the append-only file

    files = [p for p in server.data_dir.rglob("*") if p.is_file() and not p.is_socket()]
    assert any(SECRET in p.read_bytes() for p in files), "the value was not persisted"
    modes = _modes(server.data_dir)
    assert "valkey.conf" in modes and "appendonlydir" in modes, modes
    opened = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert opened == {}, f"group or others may read or enter these: {opened}"


def test_killed_server_is_started_again_with_its_data(
    server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server.start()
    url = server.url
    client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=2)
    client.set("registered", "worker-1")
    first = server.pid
    assert first is not None
    assert server.watch() is False  # running: nothing to do

    os.kill(first, signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="registry.embedded"):
        _until(server.watch)
    assert server.pid not in (None, first)
    assert server.url == url
    assert server.restarts == 1
    assert "exited with code -9; restarting it" in caplog.text
    assert "embedded Redis restarted" in caplog.text

    def answers() -> bool:
        try:
            return client.get("registered") == b"worker-1"
        except redis.ConnectionError:
            return False

    _until(answers)
    client.close()


def test_server_that_keeps_dying_is_restarted_after_a_back_off(
    server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server.start()
    caplog.set_level(logging.WARNING, logger="registry.embedded")
    for _ in range(3):  # the first deaths of a minute: started again at once
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _until(server.watch)
    assert server.restarts == 3
    assert "keeps dying" not in caplog.text

    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _until(lambda: server.watch() or "keeps dying" in caplog.text)
    assert server.restarts == 3, "restarted without waiting"
    assert "ERROR" in [r.levelname for r in caplog.records if "keeps dying" in r.message]
    assert server.watch() is False  # the back-off is still running
    _until(server.watch)  # and then it is started again
    assert server.restarts == 4
    client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=2)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    _until(answers)
    client.close()


def test_stopped_server_is_not_started_by_watch(server: EmbeddedRedis) -> None:
    server.start()
    server.stop()
    assert server.watch() is False
    assert server.pid is None
