"""Browser-borne requests: a web page cannot change the gateway, nor reach it by DNS rebinding."""

from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, WorkerFactory
from tests.gateway.test_seed_api import register, seed_registration
from tests.workers import FakeWorker

ADMIN = "admin-token-0123456789"
EVIL = "https://evil.example"


def text_body(worker: FakeWorker, model: str = "m") -> bytes:
    """A registration as a page's <form> or fetch() sends it: JSON text, no JSON type."""
    return httpx.Request("POST", "/", json=seed_registration(model, worker)).content


async def workers(http: httpx.AsyncClient) -> list[Any]:
    listing: list[Any] = (await http.get("/api/server/workers")).json()["data"]
    return listing


async def test_cross_origin_simple_post_cannot_change_the_registry(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    worker = await make_worker()
    async with gateway.client() as http:
        for content_type in ("text/plain", "application/json"):
            reply = await http.post(
                "/api/server/register",
                content=text_body(worker),
                headers={"Origin": EVIL, "Content-Type": content_type},
            )
            assert reply.status_code == 403, reply.text
            body = reply.json()
            assert body["success"] is False and body["code"] == "forbidden"
            assert "'https://evil.example'" in body["msg"] and "allowed_origins" in body["msg"]
        offline = await http.post(
            "/api/server/offline",
            json={"model_name": "m", "req_url_template": "x"},
            headers={"Origin": "null"},
        )
        assert offline.status_code == 403
        assert await workers(http) == []


async def test_cross_origin_posts_are_refused_in_each_route_family_shape(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    worker = await make_worker(name="w")
    async with gateway.client() as http:
        await register(http, seed_registration("m", worker))
        headers = {"Origin": EVIL}
        openai = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        assert openai.status_code == 403
        assert openai.json()["error"]["type"] == "permission_error"
        assert "allowed_origins" in openai.json()["error"]["message"]
        ollama = await http.post("/api/chat", json={"model": "m"}, headers=headers)
        assert ollama.status_code == 403 and "allowed_origins" in ollama.json()["error"]
        seed = await http.post(
            "/api/v1/chat/completions", json={"input": "hi", "model_name": "m"}, headers=headers
        )
        assert seed.status_code == 403 and seed.json()["code"] == "forbidden"
        key = await http.delete("/api/server/keys/0123456789abcdef", headers=headers)
        assert key.status_code == 403
    assert worker.count == 0  # nothing reached the worker


async def test_without_origin_and_from_a_listed_origin_posts_pass(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(
        allowed_origins="http://localhost:3000, https://App.example.com:443/"
    )
    worker = await make_worker(name="w")
    async with gateway.client() as http:
        plain = await register(http, seed_registration("a", worker))  # curl, SDKs: no Origin
        assert plain.status_code == 200, plain.text
        for origin, model in (("http://localhost:3000", "b"), ("https://app.example.com", "c")):
            reply = await http.post(
                "/api/server/register",
                json=seed_registration(model, worker),
                headers={"Origin": origin},
            )
            assert reply.status_code == 200, (origin, reply.text)
        other_port = await http.post(
            "/api/server/register",
            json=seed_registration("d", worker),
            headers={"Origin": "http://localhost:3001"},
        )
        assert other_port.status_code == 403
        # Reads are not refused: a page cannot read a cross-origin answer without CORS.
        listing = await http.get("/api/server/workers", headers={"Origin": EVIL})
        assert listing.status_code == 200
        assert sorted(w["model_name"] for w in listing.json()["data"]) == ["a", "b", "c"]


async def test_cross_site_fetch_without_origin_is_refused(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    worker = await make_worker()
    async with gateway.client() as http:
        refused = await http.post(
            "/api/server/register",
            json=seed_registration("m", worker),
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert refused.status_code == 403
        assert "Sec-Fetch-Site" in refused.json()["msg"]
        same = await http.post(
            "/api/server/register",
            json=seed_registration("m", worker),
            headers={"Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 200
        assert [w["model_name"] for w in await workers(http)] == ["m"]


async def test_the_guard_answers_before_access_control(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(admin_token=ADMIN)
    async with gateway.client() as http:
        reply = await http.post(
            "/api/server/keys",
            json={"name": "k"},
            headers={"Origin": EVIL, "Authorization": f"Bearer {ADMIN}"},
        )
        assert reply.status_code == 403 and "allowed_origins" in reply.json()["msg"]
        assert (
            await http.get("/api/server/keys", headers={"Authorization": f"Bearer {ADMIN}"})
        ).json()["data"] == []


@pytest.mark.parametrize(
    "path", ["/api/server/workers", "/v1/models", "/api/tags", "/healthz", "/readyz", "/nowhere"]
)
async def test_open_loopback_gateway_refuses_a_foreign_host(
    make_gateway: GatewayFactory, path: str
) -> None:
    gateway = await make_gateway()
    async with gateway.client() as http:
        reply = await http.get(path, headers={"Host": "rebound.evil.example:8007"})
        assert reply.status_code == 403
        text = reply.text
        assert "'rebound.evil.example:8007'" in text and "allowed_hosts" in text
        assert "DNS rebinding" in text


async def test_loopback_and_listed_hosts_are_answered(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(allowed_hosts="gateway.lan, 192.168.1.5")
    async with gateway.client() as http:
        for host in (
            "127.0.0.1",
            "127.0.0.1:8007",
            "127.5.6.7:1",
            "localhost:8007",
            "LOCALHOST.",
            "app.localhost:8007",
            "[::1]:8007",
            "gateway.lan:8007",
            "Gateway.LAN",
            "192.168.1.5:8007",
        ):
            reply = await http.get("/api/server/workers", headers={"Host": host})
            assert reply.status_code == 200, (host, reply.text)
        for host in ("localhost.evil.example", "127.0.0.1.evil.example", "gateway.lan.evil"):
            reply = await http.get("/api/server/workers", headers={"Host": host})
            assert reply.status_code == 403, host


@pytest.mark.parametrize(
    "settings", [{"admin_token": ADMIN}, {"host": "0.0.0.0"}], ids=["closed", "not-loopback"]
)
async def test_host_is_not_checked_when_closed_or_not_bound_to_loopback(
    make_gateway: GatewayFactory, settings: dict[str, Any]
) -> None:
    gateway = await make_gateway(**settings)
    async with gateway.client() as http:
        reply = await http.get(
            "/api/server/workers",
            headers={"Host": "gateway.example.com", "Authorization": f"Bearer {ADMIN}"},
        )
        assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_admin_routes_refuse_bodies_that_are_not_json(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, content_type: str | None
) -> None:
    gateway = await make_gateway()
    worker = await make_worker()
    async with gateway.client() as http:
        request = http.build_request("POST", "/api/server/register", content=text_body(worker))
        if content_type is None:
            request.headers.pop("Content-Type", None)
        else:
            request.headers["Content-Type"] = content_type
        reply = await http.send(request)
        assert reply.status_code == 415, reply.text
        body = reply.json()
        assert body["code"] == "unsupported_media_type"
        assert "Content-Type: application/json" in body["msg"]
        assert await workers(http) == []


async def test_admin_routes_take_json_types_and_bodiless_requests(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway()
    worker = await make_worker(name="w")
    async with gateway.client() as http:
        for model, content_type in (
            ("a", "application/json; charset=utf-8"),
            ("b", "Application/JSON"),
            ("c", "application/merge-patch+json"),
        ):
            reply = await http.post(
                "/api/server/register",
                content=text_body(worker, model),
                headers={"Content-Type": content_type},
            )
            assert reply.status_code == 200, (content_type, reply.text)
        gone = await http.delete("/api/server/keys/0123456789abcdef")
        assert gone.status_code == 404  # no body: no media type to check
        # Inference routes keep reading any body as JSON, as before.
        seed = await http.post(
            "/api/v1/chat/completions",
            content=b'{"input": "hi", "model_name": "a"}',
            headers={"Content-Type": "text/plain"},
        )
        assert seed.status_code == 200 and seed.json()["result"] == "w: hi"


async def test_the_gateways_own_page_may_post_when_its_host_is_trusted(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    # The dashboard (/ui) sends its Origin, the Host it was loaded from, with each POST.
    gateway = await make_gateway(allowed_hosts="gateway.lan")
    worker = await make_worker(name="w")
    async with gateway.client() as http:
        for host, model in (("127.0.0.1:8007", "a"), ("localhost:8007", "b"), ("gateway.lan", "c")):
            reply = await http.post(
                "/api/server/register",
                json=seed_registration(model, worker),
                headers={"Host": host, "Origin": f"http://{host}"},
            )
            assert reply.status_code == 200, (host, reply.text)
        behind_tls = await http.post(
            "/api/server/offline",
            json={"model_name": "c", "req_url_template": f"{worker.url}/api/generate"},
            headers={"Host": "gateway.lan", "Origin": "https://gateway.lan"},
        )
        assert behind_tls.status_code == 200, behind_tls.text
        # Same-origin by name is not enough: a page on another port is another site.
        other_port = await http.post(
            "/api/server/register",
            json=seed_registration("d", worker),
            headers={"Host": "localhost:8007", "Origin": "http://localhost:3000"},
        )
        assert other_port.status_code == 403
        # A same-origin page still sends JSON bodies only.
        text = await http.post(
            "/api/server/register",
            content=text_body(worker, "e"),
            headers={"Host": "localhost:8007", "Origin": "http://localhost:8007"},
        )
        assert text.status_code == 415
        assert sorted(w["model_name"] for w in await workers(http)) == ["a", "b"]


async def test_a_rebound_page_is_same_origin_with_itself_and_still_refused_on_open_routes(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    # Bound to all interfaces, open: Host is not checked, so a rebound page's own name (it is
    # same-origin with itself) must not open the registry.
    gateway = await make_gateway(host="0.0.0.0")
    worker = await make_worker(name="w")
    rebound = {"Host": "rebound.evil.example:8007", "Origin": "http://rebound.evil.example:8007"}
    async with gateway.client() as http:
        reply = await http.post(
            "/api/server/register", json=seed_registration("m", worker), headers=rebound
        )
        assert reply.status_code == 403
        assert "allowed_origins" in reply.json()["msg"] and "admin_token" in reply.json()["msg"]
        chat = await http.post(
            "/api/v1/chat/completions", json={"input": "x", "model_name": "m"}, headers=rebound
        )
        assert chat.status_code == 403
        assert await workers(http) == []


async def test_with_an_admin_token_a_same_origin_page_gets_to_the_token_check(
    make_gateway: GatewayFactory, make_worker: WorkerFactory
) -> None:
    gateway = await make_gateway(host="0.0.0.0", admin_token=ADMIN)
    worker = await make_worker(name="w")
    page = {"Host": "gateway.example.com", "Origin": "https://gateway.example.com"}
    async with gateway.client() as http:
        anonymous = await http.post(
            "/api/server/register", json=seed_registration("m", worker), headers=page
        )
        assert anonymous.status_code == 401  # a rebound page has no token to send
        signed = await http.post(
            "/api/server/register",
            json=seed_registration("m", worker),
            headers={**page, "Authorization": f"Bearer {ADMIN}"},
        )
        assert signed.status_code == 200, signed.text
        # Inference is open here (no require_api_keys): a page by that name may not use it.
        chat = await http.post(
            "/api/v1/chat/completions", json={"input": "x", "model_name": "m"}, headers=page
        )
        assert chat.status_code == 403
    assert worker.count == 0
