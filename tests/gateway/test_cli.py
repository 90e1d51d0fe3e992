"""`llm-gateway serve` as a user runs it: a real process, the embedded Redis, signals."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.settings import load_settings

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log


def start(data_dir: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    """Run `llm-gateway serve` in its own process and wait until it is ready."""
    port = free_port()
    log = tmp_path / f"gateway-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(env or {})
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Served(process, url, log)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError("gateway did not become ready:\n" + log.read_text())


def embedded_pids(data_dir: Path) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"unixsocket:{data_dir}"], capture_output=True, text=True, check=False
    )
    pids = []
    for pid in found.stdout.split():
        state = Path(f"/proc/{pid}/stat")
        if state.exists() and state.read_text().split()[2] != "Z":
            pids.append(int(pid))
    return pids


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "d"
    yield path
    for pid in embedded_pids(path):
        os.kill(pid, signal.SIGKILL)


def test_registrations_survive_a_restart_and_sigterm_leaves_no_process(
    data_dir: Path, tmp_path: Path
) -> None:
    served = start(data_dir, tmp_path)
    log = served.log.read_text()
    assert "embedded Redis" in log and str(data_dir) in log
    body = {
        "model_name": "persisted",
        "req_url_template": "http://127.0.0.1:9/gen",
        "body": {"input": "{USER_PROMPT}"},
    }
    assert httpx.post(f"{served.url}/api/server/register", json=body).status_code == 200
    assert len(embedded_pids(data_dir)) == 1

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(15) == 0
    assert embedded_pids(data_dir) == []

    again = start(data_dir, tmp_path)
    try:
        listed = httpx.get(f"{again.url}/api/server/workers").json()["data"]
        assert [w["model_name"] for w in listed] == ["persisted"]
    finally:
        again.process.send_signal(signal.SIGINT)
        assert again.process.wait(15) == 0
    assert embedded_pids(data_dir) == []


def test_killed_gateway_takes_its_embedded_redis_with_it(data_dir: Path, tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    served = start(data_dir, tmp_path)
    assert len(embedded_pids(data_dir)) == 1
    served.process.kill()
    served.process.wait(5)
    deadline = time.monotonic() + 5
    while embedded_pids(data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert embedded_pids(data_dir) == []


def test_second_gateway_on_the_same_data_dir_is_refused_clearly(
    data_dir: Path, tmp_path: Path
) -> None:
    served = start(data_dir, tmp_path)
    try:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        )
        assert second.returncode == 1
        assert "already running with this data dir" in second.stdout + second.stderr
    finally:
        served.process.terminate()
        served.process.wait(15)


def test_settings_precedence_is_cli_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('port = 9001\nhost = "0.0.0.0"\nmax_tries = 4\n')
    settings = load_settings(
        {"port": 9003}, config_file=config, environ={"GATEWAY_PORT": "9002", "GATEWAY_HOST": "::1"}
    )
    assert (settings.port, settings.host, settings.max_tries) == (9003, "::1", 4)
    assert settings.redis_url is None


def test_invalid_setting_exits_with_a_message(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_PORT": "eighty",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    assert result.returncode == 2
    assert "port" in result.stderr


def test_serve_refuses_a_config_file_with_a_bad_worker_naming_file_and_variable(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[[workers]]\nmodel_name = "gpt"\npreset = "openai"\n'
        'req_url_template = "https://api.openai.com/v1"\n'
        'header = { Authorization = "Bearer ${UNSET_FOR_THIS_TEST}" }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "workers[0] (model_name 'gpt')" in result.stderr
    assert "UNSET_FOR_THIS_TEST is not set" in result.stderr
