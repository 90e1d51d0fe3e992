"""The dashboard (/ui) in a real browser: Debian's chromium driven by Playwright.

Each test logs in as an operator would and reads what the page shows. With
GATEWAY_SCREENSHOTS=DIR (`make screenshots` sets docs/) the tests also save each page there
as ui-<page>.png; the fleet is then several models with one worker down.
"""

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import Gateway, GatewayFactory, WorkerFactory
from tests.gateway.test_health import FAST_HEALTH, WorkerProcess
from tests.gateway.test_seed_api import register, seed_registration

ADMIN = "dashboard-admin-token-0123"
CHROMIUM = shutil.which("chromium")
# No sandbox: CI runs as root in a container; nothing else is fetched by the browser itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = os.environ.get("GATEWAY_SCREENSHOTS")
WAIT_MS = 15_000  # a hang guard for what the page must come to show, not a speed check


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        why = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("GATEWAY_TEST_BROWSER") == "required":
            pytest.fail(why)
        pytest.skip(why)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    opened.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield opened
    await context.close()
    assert problems == []  # no script failed, the page never hit its own CSP


@pytest.fixture
def worker_processes() -> Iterator[Callable[[str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        worker = WorkerProcess(name)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()


def admin_client(gateway: Gateway) -> httpx.AsyncClient:
    return gateway.client(headers={"Authorization": f"Bearer {ADMIN}"})


async def shoot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"ui-{name}.png"), full_page=True)


async def log_in(page: Page, gateway: Gateway) -> None:
    await page.goto(f"{gateway.url}/ui")
    await page.fill("#login input[name=token]", ADMIN)
    await page.click("#login button")
    await expect(page.locator("#fleet-status")).to_contain_text("workers up", timeout=WAIT_MS)


def row(page: Page, worker_id: str) -> Any:
    return page.locator(f'tr[data-worker-id="{worker_id}"]')


async def test_login_keeps_the_token_in_the_tab_and_refuses_a_wrong_one(
    make_gateway: GatewayFactory, page: Page
) -> None:
    gateway = await make_gateway(admin_token=ADMIN)
    async with gateway.client() as http:
        served = await http.get("/ui/")
        assert served.status_code == 200
        csp = served.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert (await http.get("/api/server/fleet")).status_code == 401

    await page.goto(f"{gateway.url}/ui")
    await expect(page.locator("#login")).to_be_visible()
    await shoot(page, "login")
    await page.fill("#login input[name=token]", "not-the-admin-token")
    await page.click("#login button")
    await expect(page.locator("#login .error")).to_have_text("the admin token is not correct")

    await log_in(page, gateway)
    assert "token" not in page.url and ADMIN not in page.url
    kept = await page.evaluate("sessionStorage.getItem('llm-gateway.admin-token')")
    assert kept == ADMIN
    await page.reload()  # the tab keeps it: no second login
    await expect(page.locator("#fleet-status")).to_contain_text("workers up", timeout=WAIT_MS)

    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('llm-gateway.admin-token')") is None


async def test_fleet_shows_a_killed_worker_down_and_back_up(
    # Workers first: fixtures stop in reverse order, so the gateway stops probing them (every
    # 0.2 s) before they stop; a probe accepted while a worker shuts down would leak a socket.
    make_worker: WorkerFactory,
    worker_processes: Callable[[str], WorkerProcess],
    make_gateway: GatewayFactory,
    page: Page,
) -> None:
    gateway = await make_gateway(admin_token=ADMIN, **FAST_HEALTH)
    first, second = worker_processes("llama-a"), worker_processes("llama-b")
    others = [await make_worker(name=f"w{i}") for i in range(3)]
    async with admin_client(gateway) as http:
        ids = {}
        for process in (first, second):
            body = seed_registration("llama-3-8b", process, health_url=f"{process.url}/health")
            body["req_url_template"] = f"{process.url}/api/generate"
            ids[process.name] = (await register(http, body)).json()["id"]
        await register(http, seed_registration("qwen-2.5-7b", others[0], owner="research"))
        for worker in others[1:]:
            await register(http, seed_registration("mistral-7b", worker, owner="support"))

        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                for model in ("llama-3-8b", "qwen-2.5-7b", "mistral-7b"):
                    await http.post(
                        "/api/v1/chat/completions", json={"input": "hi", "model_name": model}
                    )
                await asyncio.sleep(0.02)

        load = asyncio.create_task(traffic())
        try:
            await log_in(page, gateway)
            victim = row(page, ids["llama-b"])
            await expect(victim.locator(".badge")).to_have_text("up", timeout=WAIT_MS)
            await expect(page.locator("section.model")).to_have_count(3)

            second.kill()
            await expect(victim.locator(".badge")).to_have_text("down", timeout=WAIT_MS)
            await expect(victim.locator("td.reason")).to_contain_text("health probe failed")
            survivor = row(page, ids["llama-a"])
            await expect(survivor.locator(".badge")).to_have_text("up")
            await expect(page.locator('section[data-model="llama-3-8b"] .count')).to_have_text(
                "1 of 2 up"
            )
            await shoot(page, "fleet")

            await victim.locator("a").click()
            await expect(page.locator("#worker-probes")).to_contain_text("health probe failed")
            await expect(page.locator("h1 .badge")).to_have_text("down")
            await shoot(page, "worker")

            await page.click('nav a[data-page="charts"]')
            chart = page.locator('section.chart[data-model="llama-3-8b"]')
            await expect(chart.locator("rect.bar").first).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator("section.chart")).to_have_count(3)
            await shoot(page, "charts")

            second.start()  # same port: the worker comes back
            await page.click('nav a[data-page="fleet"]')
            await expect(victim.locator(".badge")).to_have_text("up", timeout=WAIT_MS)
            await expect(page.locator('section[data-model="llama-3-8b"] .count')).to_have_text(
                "2 of 2 up"
            )
        finally:
            stop.set()
            await load


async def test_register_through_the_form_with_the_apis_own_messages(
    make_worker: WorkerFactory, make_gateway: GatewayFactory, page: Page
) -> None:
    # The worker is started first so it stops last: the gateway's keep-alive connections to
    # it are closed by the gateway's own cleanup, not left to the worker's.
    gateway = await make_gateway(admin_token=ADMIN)
    worker = await make_worker(name="formed")
    url = f"{worker.url}/api/generate"
    bad = {"model_name": "form-model", "req_url_template": url, "body": {"input": "hi"}}
    async with admin_client(gateway) as http:
        refused = await register(http, bad)
    assert refused.status_code == 422
    expected = refused.json()["msg"]
    assert "USER_PROMPT" in expected

    await log_in(page, gateway)
    await page.click('nav a[data-page="register"]')
    form = page.locator("#worker-form")
    await form.locator("input[name=model_name]").fill("form-model")
    await form.locator("input[name=req_url_template]").fill(url)
    await form.locator("textarea[name=body]").fill('{"input": "hi"}')
    await form.locator("button[type=submit]").click()
    await expect(page.locator("#form-message")).to_have_text(expected)
    await shoot(page, "register")

    body = '{"input": "{USER_PROMPT}"}'
    await form.locator("textarea[name=body]").fill(body)
    await form.locator("input[name=response_extract]").fill("data.items[].attributes.answer")
    await form.locator("textarea[name=header]").fill("X-Api-Key: sekrit-value")
    await form.locator("button[type=submit]").click()
    await expect(page.locator("#form-done")).to_contain_text("register LLM form-model succeed!")
    await expect(page.locator("#form-message")).to_have_text("")

    await page.click("#form-done a")
    await expect(page.locator("#worker-record")).to_contain_text("X-Api-Key")
    assert "sekrit-value" not in await page.content()
    await page.fill("#prompt textarea[name=input]", "ping")
    await page.click("#prompt button")
    await expect(page.locator("#prompt-answer")).to_have_text("formed: ping")
    assert worker.received[-1].headers["X-Api-Key"] == "sekrit-value"

    await page.click("text=Edit")
    form = page.locator("#worker-form")
    await expect(form.locator("input[name=req_url_template]")).to_have_value(url)
    await form.locator("input[name=owner]").fill("platform team")
    await form.locator("button[type=submit]").click()
    # The header's value is never shown, so it must be typed again before saving.
    await expect(page.locator("#form-message")).to_contain_text("type the value of X-Api-Key")
    await form.locator("textarea[name=header]").fill("X-Api-Key: sekrit-value")
    await form.locator("button[type=submit]").click()
    await expect(page.locator("#form-done")).to_contain_text("replace LLM form-model succeed!")

    await page.click("#form-done a")
    await expect(page.locator("#worker-record")).to_contain_text("platform team")
    await page.click("#offline")
    await page.click("#offline")  # the second click confirms
    await expect(page.locator("#notice")).to_contain_text("remove llm worker")
    await expect(page.locator("#fleet")).to_contain_text("No worker is registered yet")
    async with admin_client(gateway) as http:
        assert (await http.get("/api/server/workers")).json()["data"] == []


async def test_create_a_key_shown_once_then_revoke_it(
    make_gateway: GatewayFactory, make_worker: WorkerFactory, page: Page
) -> None:
    gateway = await make_gateway(admin_token=ADMIN, require_api_keys=True)
    worker = await make_worker(name="keyed")
    async with admin_client(gateway) as http:
        await register(http, seed_registration("m", worker))

    await log_in(page, gateway)
    await page.click('nav a[data-page="keys"]')
    await page.fill("#key-form input[name=name]", "ci-runner")
    await page.fill("#key-form input[name=requests_per_minute]", "many")
    await page.click("#key-form button")
    await expect(page.locator("#key-message")).to_contain_text("requests_per_minute")

    await page.fill("#key-form input[name=requests_per_minute]", "600")
    await page.click("#key-form button")
    secret = (await page.locator("#new-key-value").inner_text()).strip()
    assert secret.startswith("gwk-")
    listed = page.locator("table.keys tbody tr")
    await expect(listed).to_have_count(1)
    await expect(listed).to_contain_text("ci-runner")
    await expect(listed).to_contain_text("600")
    await shoot(page, "keys")

    async with gateway.client() as http:
        chat = {"input": "hi", "model_name": "m"}
        headers = {"Authorization": f"Bearer {secret}"}
        served = await http.post("/api/v1/chat/completions", json=chat, headers=headers)
        assert served.status_code == 200
        assert served.json()["result"] == "keyed: hi"

        await page.locator("table.keys button").click()
        await page.locator("table.keys button").click()
        await expect(page.locator("#keys")).to_have_text("No API key yet.")
        refused = await http.post("/api/v1/chat/completions", json=chat, headers=headers)
        assert refused.status_code == 403
