"""Metrics, request ids and the access log, as an operator scraping and reading logs sees them."""

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics, MetricsConfigError
from registry import EmbeddedRedis
from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_auth import ADMIN, ADMIN_HEADERS, bearer, create_key
from tests.gateway.test_seed_api import seed_registration

SECRET = "worker-secret-value-123"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Index a scrape by (sample name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(scrape: str, name: str, **labels: str) -> float | None:
    return samples(scrape).get((name, frozenset(labels.items())))


def test_every_metric_method_appears_in_the_scrape() -> None:
    metrics = Metrics()
    metrics.watch_registry(lambda: {"m": 2, "n": 1})
    metrics.request_started()
    metrics.request_finished("seed", "/api/v1/chat/completions", "m", 200, 0.2)
    metrics.observe_upstream("m", "http://10.0.0.1:8000/v1", 200, 0.15)
    metrics.observe_upstream("m", "http://10.0.0.1:8000/v1", "timeout", 5.0)
    metrics.observe_ttft("m", "http://10.0.0.1:8000/v1", 0.05)
    metrics.retry("m")
    metrics.ejected("m", "http://10.0.0.1:8000/v1")
    metrics.watch_workers(lambda: [("m", "http://10.0.0.1:8000/v1", "ejected")])
    metrics.watch_load(lambda: [("m", "http://10.0.0.1:8000/v1", 3)])
    metrics.redis_error("follower")
    metrics.auth_refused("inference", "missing")
    metrics.rate_limited("requests_per_minute")
    scrape = metrics.scrape().decode()
    worker = "http://10.0.0.1:8000/v1"
    route = "/api/v1/chat/completions"
    call = {"model": "m", "worker": worker}
    seed = {"family": "seed", "route": route}
    expected = [
        ("gateway_requests_total", {**seed, "model": "m", "status": "200"}, 1),
        ("gateway_request_duration_seconds_count", {"family": "seed", "model": "m"}, 1),
        ("gateway_requests_in_progress", {}, 0),
        ("gateway_upstream_duration_seconds_count", {**call, "status": "200"}, 1),
        ("gateway_upstream_duration_seconds_count", {**call, "status": "timeout"}, 1),
        ("gateway_upstream_ttft_seconds_count", {"model": "m", "worker": worker}, 1),
        ("gateway_upstream_retries_total", {"model": "m"}, 1),
        ("gateway_worker_ejections_total", {"model": "m", "worker": worker}, 1),
        ("gateway_worker_healthy", {"model": "m", "worker": worker, "state": "ejected"}, 0),
        ("gateway_worker_in_flight", {"model": "m", "worker": worker}, 3),
        ("gateway_redis_errors_total", {"component": "follower"}, 1),
        ("gateway_auth_refused_total", {"access": "inference", "reason": "missing"}, 1),
        ("gateway_rate_limited_total", {"limit": "requests_per_minute"}, 1),
        ("gateway_registry_models", {}, 2),
        ("gateway_registry_workers", {"model": "m"}, 2),
        ("gateway_registry_workers", {"model": "n"}, 1),
    ]  # fmt: skip
    for name, labels, count in expected:
        assert value(scrape, name, **labels) == count, (name, labels)
    metrics.forget_worker("m", worker)
    assert (
        value(metrics.scrape().decode(), "gateway_worker_healthy", model="m", worker=worker) is None
    )


def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    first, second = Metrics(), Metrics()
    first.retry("m")
    assert value(second.scrape().decode(), "gateway_upstream_retries_total", model="m") is None


def test_multiprocess_mode_needs_the_environment(tmp_path: Path) -> None:
    with pytest.raises(MetricsConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiproc_dir=tmp_path)


_CHILD = """
import sys
from pathlib import Path
from gateway.metrics import Metrics
metrics = Metrics(multiproc_dir=Path(sys.argv[1]))
if sys.argv[2] == "count":
    metrics.request_started()
    metrics.request_finished("seed", "/api/v1/chat/completions", "m", 200, 0.1)
    metrics.retry("m")
else:
    metrics.watch_registry(lambda: {"m": 1})
    sys.stdout.write(metrics.scrape().decode())
"""


def test_multiprocess_scrape_sums_every_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), "count"], env=env, check=True)
    scrape = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), "scrape"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    labels = {"family": "seed", "route": "/api/v1/chat/completions", "model": "m", "status": "200"}
    assert value(scrape, "gateway_requests_total", **labels) == 2
    assert value(scrape, "gateway_upstream_retries_total", model="m") == 2
    assert value(scrape, "gateway_registry_workers", model="m") == 1


async def test_scrape_after_traffic_has_bounded_labels_and_no_secrets(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    worker = await make_worker()
    async with gateway.client() as http:
        body = seed_registration("m", worker, header={"X-Key": SECRET})
        assert (await http.post("/api/server/register", json=body)).status_code == 200
        for _ in range(3):
            reply = await http.post(
                "/api/v1/chat/completions", json={"input": "a private prompt", "model_name": "m"}
            )
            assert reply.status_code == 200
        for i in range(5):
            reply = await http.post(
                "/v1/chat/completions",
                json={"model": f"made-up-{i}", "messages": [{"role": "user", "content": "x"}]},
            )
            assert reply.status_code == 404
        await http.get("/no/such/route")
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain")
    scrape = scraped.text
    seed = {"family": "seed", "route": "/api/v1/chat/completions"}
    assert value(scrape, "gateway_requests_total", **seed, model="m", status="200") == 3
    openai = {"family": "openai", "route": "/v1/chat/completions"}
    assert value(scrape, "gateway_requests_total", **openai, model="unknown", status="404") == 5
    unmatched = {"family": "none", "route": "unmatched", "model": "", "status": "404"}
    assert value(scrape, "gateway_requests_total", **unmatched) == 1
    assert value(scrape, "gateway_registry_workers", model="m") == 1
    assert value(scrape, "gateway_registry_models") == 1
    assert "made-up" not in scrape
    assert "private prompt" not in scrape
    assert SECRET not in scrape


async def test_metrics_token_protects_the_scrape(make_gateway: GatewayFactory) -> None:
    token = "metrics-token-0123456789"
    gateway = await make_gateway(metrics_token=token)
    async with gateway.client() as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=bearer("wrong-token"))).status_code == 403
        assert (await http.get("/metrics", headers=bearer(token))).status_code == 200


async def test_request_id_is_kept_or_made_and_returned(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    worker = await make_worker()
    async with gateway.client() as http:
        await http.post("/api/server/register", json=seed_registration("m", worker))
        body = {"input": "x", "model_name": "m"}
        kept = await http.post(
            "/api/v1/chat/completions", json=body, headers={"X-Request-ID": "trace-42.a:b"}
        )
        assert kept.headers["X-Request-ID"] == "trace-42.a:b"
        made = await http.post("/api/v1/chat/completions", json=body)
        assert len(made.headers["X-Request-ID"]) == 32
        for bad in ("has spaces in it", "x" * 200, "semi;colon", ""):
            reply = await http.get("/healthz", headers={"X-Request-ID": bad})
            assert reply.headers["X-Request-ID"] != bad
            assert len(reply.headers["X-Request-ID"]) == 32
        error = await http.get("/nowhere", headers={"X-Request-ID": "err-1"})
        assert error.status_code == 404 and error.headers["X-Request-ID"] == "err-1"
        stream = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
            headers={"X-Request-ID": "stream-1"},
        )
        assert stream.status_code == 200 and stream.headers["X-Request-ID"] == "stream-1"


async def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]


async def test_access_log_has_one_json_line_per_request(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await make_gateway(access_log="on", admin_token=ADMIN, require_api_keys=True)
    worker = await make_worker()
    async with gateway.client() as http:
        body = seed_registration("m", worker, header={"X-Key": SECRET})
        await http.post("/api/server/register", json=body, headers=ADMIN_HEADERS)
        key = await create_key(http)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway.access"):
            await http.post(
                "/api/v1/chat/completions",
                json={"input": "x", "model_name": "m"},
                headers={"X-Request-ID": "req-1", **bearer(key)},
            )
            await http.post(
                "/api/v1/chat/completions",
                json={"input": "x", "model_name": "ghost"},
                headers={"X-Request-ID": "req-2", **bearer(key)},
            )
            await http.get("/api/server/workers", headers={"X-Request-ID": "req-3"})
    lines = await access_lines(caplog)
    assert [line["request_id"] for line in lines] == ["req-1", "req-2", "req-3"]
    ok, ghost, refused = lines
    assert ok["method"] == "POST" and ok["route"] == "/api/v1/chat/completions"
    assert ok["status"] == 200 and ok["model"] == "m" and ok["tries"] == 1
    assert ok["worker"] == f"{worker.url}/api/generate"
    assert isinstance(ok["latency_ms"], float) and isinstance(ok["upstream_ms"], float)
    assert isinstance(ok["key_id"], str) and ok["key_id"] not in key
    assert ghost["status"] == 404 and ghost["error"] == "model_not_found"
    assert ghost["worker"] is None
    assert refused["status"] == 401 and refused["error"] == "unauthorized"
    joined = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in joined and key not in joined


async def test_access_log_is_off_by_default_and_sampling_keeps_5xx(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    quiet = await make_gateway()
    broken = await make_worker(status=500)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with quiet.client() as http:
            await http.post("/api/server/register", json=seed_registration("m", broken))
            await http.get("/healthz")
            await http.get("/nowhere")
            await http.post("/api/v1/chat/completions", json={"input": "x", "model_name": "m"})
        assert await access_lines(caplog) == []
        sampled = await make_gateway(access_log=1e-9)
        async with sampled.client() as http:
            await http.get("/healthz")
            malformed = await http.post(
                "/api/server/register", content=b"{", headers={"Content-Type": "application/json"}
            )
            assert malformed.status_code == 400
            reply = await http.post(
                "/api/v1/chat/completions", json={"input": "x", "model_name": "m"}
            )
            assert reply.status_code == 502
    lines = await access_lines(caplog)
    assert [(line["status"], line["error"]) for line in lines] == [(502, "upstream_error")]


async def test_redis_errors_are_counted_and_limits_fail_open(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "own-redis", persist=False)
    server.start()
    try:
        gateway = await make_gateway(
            redis_url=server.url, admin_token=ADMIN, require_api_keys=True, api_key_cache_ttl_s=60
        )
        worker = await make_worker()
        async with gateway.client() as http:
            body = seed_registration("m", worker)
            await http.post("/api/server/register", json=body, headers=ADMIN_HEADERS)
            key = await create_key(http, requests_per_minute=100)
            chat = {"input": "x", "model_name": "m"}
            first = await http.post("/api/v1/chat/completions", json=chat, headers=bearer(key))
            assert first.status_code == 200
            server.stop()
            # The key is cached; its rate limit cannot be counted, and the request goes on.
            reply = await http.post("/api/v1/chat/completions", json=chat, headers=bearer(key))
            assert reply.status_code == 200
            # An unknown key cannot be looked up: 503, not a guess.
            reply = await http.post("/api/v1/chat/completions", json=chat, headers=bearer("gwk-x"))
            assert reply.status_code == 503
            reply = await http.post("/api/server/register", json=body, headers=ADMIN_HEADERS)
            assert reply.status_code == 503
            for _ in range(100):
                scrape = (await http.get("/metrics")).text
                if value(scrape, "gateway_redis_errors_total", component="follower"):
                    break
                await asyncio.sleep(0.05)
        assert value(scrape, "gateway_redis_errors_total", component="rate_limit") == 1
        assert value(scrape, "gateway_redis_errors_total", component="request") == 2
        assert (value(scrape, "gateway_redis_errors_total", component="follower") or 0) >= 1
    finally:
        server.stop()


async def test_worker_metrics_follow_real_traffic(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    from tests.gateway.test_seed_api import register, seed_registration

    gateway = await make_gateway(eject_after_failures=1, ejection_base_s=60, max_tries=2)
    broken, healthy = await make_worker(name="b", status=500), await make_worker(name="h")
    async with gateway.client() as client:
        await register(client, seed_registration("m", broken))
        await register(client, seed_registration("m", healthy))
        seen = set()
        for i in range(3):
            reply = await client.post(
                "/api/v1/chat/completions",
                json={"input": str(i), "model_name": "m"},
                headers={"X-Request-ID": f"trace-{i}"},
            )
            assert reply.status_code == 200
            assert reply.headers["X-Request-ID"] == f"trace-{i}"
            seen.add(healthy.received[-1].headers.get("X-Request-ID"))
        assert seen == {"trace-0", "trace-1", "trace-2"}  # the worker sees the client's id
        scrape = (await client.get("/metrics")).text
    broken_label = f"{broken.url}/api/generate"
    healthy_label = f"{healthy.url}/api/generate"
    assert value(scrape, "gateway_upstream_retries_total", model="m") == 1
    assert value(scrape, "gateway_worker_ejections_total", model="m", worker=broken_label) == 1
    assert (
        value(
            scrape,
            "gateway_upstream_duration_seconds_count",
            model="m",
            worker=broken_label,
            status="500",
        )
        == 1
    )
    assert (
        value(
            scrape,
            "gateway_upstream_duration_seconds_count",
            model="m",
            worker=healthy_label,
            status="200",
        )
        == 3
    )
    assert (
        value(scrape, "gateway_worker_healthy", model="m", worker=broken_label, state="ejected")
        == 0
    )
    assert (
        value(scrape, "gateway_worker_healthy", model="m", worker=healthy_label, state="unknown")
        == 1
    )
    assert value(scrape, "gateway_worker_in_flight", model="m", worker=healthy_label) == 0
