"""The gateway's own processes: the embedded valkey is supervised, `--processes N` children get
their settings (secrets included) without exposing them."""

import logging
import os
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import EMBEDDED_REDIS
from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_cli import Served, data_dir, embedded_pids, start  # noqa: F401 - fixture
from tests.gateway.test_health import until
from tests.gateway.test_seed_api import seed_registration

ADMIN = "admin-token-for-the-children-0123"
METRICS = "metrics-token-for-the-children-0123"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _registers(client: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> bool:
    return (await client.post("/api/server/register", json=body, **kw)).status_code == 200


async def _models(client: httpx.AsyncClient, **kw: Any) -> list[str]:
    listing = (await client.get("/api/server/workers", **kw)).json()["data"]
    return sorted(w["model_name"] for w in listing)


async def _models_are(client: httpx.AsyncClient, expected: list[str], **kw: Any) -> bool:
    return await _models(client, **kw) == expected


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


def _chat(model: str) -> dict[str, str]:
    return {"input": "hi", "model_name": model}


async def _pid(client: httpx.AsyncClient) -> int:
    pid: int = (await client.get("/healthz")).json()["pid"]
    return pid


def _restarts_counted(scrape: str) -> float:
    for line in scrape.splitlines():
        if line.startswith("gateway_embedded_redis_restarts_total "):
            return float(line.split()[1])
    raise AssertionError("gateway_embedded_redis_restarts_total is not in the scrape")


async def test_killed_embedded_valkey_is_restarted_and_keeps_the_registry(
    make_gateway: GatewayFactory,
    make_worker: WorkerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await make_gateway(redis_url=None, data_dir=tmp_path / "data")
    server = gateway.app[EMBEDDED_REDIS]
    worker = await make_worker(name="w")
    caplog.set_level(logging.WARNING, logger="registry.embedded")
    async with gateway.client() as client:
        assert await _registers(client, seed_registration("before", worker))
        assert _restarts_counted((await client.get("/metrics")).text) == 0
        killed = server.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)

        # Writes come back by themselves: the server is restarted, the client reconnects.
        await until(lambda: _registers(client, seed_registration("after", worker)), 20)
        assert server.pid != killed
        await until(lambda: _models_are(client, ["after", "before"]), 20)
        await until(lambda: _ready(client), 20)
        assert (await client.post("/api/v1/chat/completions", json=_chat("before"))).json()[
            "result"
        ] == "w: hi"
        assert _restarts_counted((await client.get("/metrics")).text) == 1
    assert f"embedded Redis (valkey, pid {killed}) exited with code -9" in caplog.text


@pytest.mark.slow
async def test_processes_with_tokens_and_api_keys_serve_from_every_child(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    make_worker: WorkerFactory,
) -> None:
    started_at = time.time()
    secrets = {
        "GATEWAY_ADMIN_TOKEN": ADMIN,
        "GATEWAY_METRICS_TOKEN": METRICS,
        "GATEWAY_REQUIRE_API_KEYS": "true",
    }
    served = start(data_dir, tmp_path, "--processes", "2", env=secrets)
    try:
        worker = await make_worker(name="w")
        admin = bearer(ADMIN)
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            assert await _registers(http, seed_registration("m", worker), headers=admin)
            created = await http.post("/api/server/keys", json={"name": "t"}, headers=admin)
            assert created.status_code == 200, created.text
            key = bearer(created.json()["data"]["key"])
        before = worker.count

        # One connection at a time, each served by one process: what every child answers.
        seen: dict[int, list[tuple[str, int | str]]] = {}
        for _ in range(300):
            if len(seen) == 2:
                break
            limits = httpx.Limits(max_connections=1)
            async with httpx.AsyncClient(base_url=served.url, timeout=10, limits=limits) as one:
                pid = await _pid(one)
                answers: list[tuple[str, int | str]] = [
                    ("admin", (await one.get("/api/server/workers", headers=admin)).status_code),
                    ("no token", (await one.get("/api/server/workers")).status_code),
                    ("metrics", (await one.get("/metrics", headers=bearer(METRICS))).status_code),
                    ("no metrics token", (await one.get("/metrics")).status_code),
                ]
                chat = await one.post("/api/v1/chat/completions", json=_chat("m"), headers=key)
                answers.append(("inference", chat.json().get("result") or chat.text))
                if await _pid(one) == pid and pid not in seen:
                    seen[pid] = answers
        assert len(seen) == 2, "requests did not reach both processes"
        expected = [
            ("admin", 200),
            ("no token", 401),
            ("metrics", 200),
            ("no metrics token", 401),
            ("inference", "w: hi"),
        ]
        assert seen == {pid: expected for pid in seen}
        assert worker.count > before

        # The operator put the secrets in the parent's environment; children get them on stdin.
        shown = [Path(f"/proc/{pid}/cmdline") for pid in [*seen, served.process.pid]]
        shown += [Path(f"/proc/{pid}/environ") for pid in seen]
        for path in shown:
            exposed = path.read_bytes()
            assert ADMIN.encode() not in exposed and METRICS.encode() not in exposed, path
        readable = _readable_by_others_containing(
            [Path(tempfile.gettempdir()), data_dir, tmp_path], [ADMIN, METRICS], started_at
        )
        assert readable == []
    finally:
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(20) == 0


def _readable_by_others_containing(
    roots: list[Path], secrets: list[str], since: float
) -> list[Path]:
    """Return files written since `since` that others may read and that hold a secret."""
    found = []
    checked = 0
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                try:
                    info = path.lstat()
                    if (
                        not stat.S_ISREG(info.st_mode)
                        or info.st_uid != os.getuid()
                        or info.st_mtime < since
                        or info.st_size > 1 << 20
                        or not info.st_mode & 0o044
                    ):
                        continue
                    content = path.read_bytes()
                except OSError:
                    continue
                checked += 1
                if any(secret.encode() in content for secret in secrets):
                    found.append(path)
    assert checked > 0  # at least the gateway's own log was looked at
    return found


@pytest.mark.slow
async def test_processes_parent_restarts_a_killed_embedded_valkey(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    served: Served = start(data_dir, tmp_path, "--processes", "2")
    body: dict[str, Any] = {
        "model_name": "before",
        "req_url_template": "http://127.0.0.1:9/gen",
        "body": {"input": "{USER_PROMPT}"},
    }
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            assert await _registers(http, body)
            [killed] = embedded_pids(data_dir)
            os.kill(killed, signal.SIGKILL)
            await until(lambda: _registers(http, {**body, "model_name": "after"}), 20)
            [restarted] = embedded_pids(data_dir)
            assert restarted != killed
            # Every process (fresh connections) lists both: the first survived the kill.
            fresh = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=served.url, timeout=10, limits=fresh) as each:
                await until(lambda: _listed_by_all(each), 20)
                assert _restarts_counted((await each.get("/metrics")).text) == 1
    finally:
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(20) == 0
    assert f"embedded Redis (valkey, pid {killed}) exited with code -9" in served.log.read_text()
    assert embedded_pids(data_dir) == []


async def _listed_by_all(client: httpx.AsyncClient) -> bool:
    return all([await _models_are(client, ["after", "before"]) for _ in range(20)])
