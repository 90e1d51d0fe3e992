"""Fake model workers: real HTTP servers that answer like an inference service would.

The default speaks the seed document's custom JSON protocol: it takes `{"input", ...}` and
answers `{"data": {"items": [{"attributes": {"answer": ...}}]}}`. Behaviour can be changed
while it runs (status, delay, raw body) to stage the faults a real worker produces.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class FakeWorker:
    name: str = "worker"
    status: int = 200
    delay_s: float = 0.0
    raw: bytes | None = None  # answer these bytes verbatim instead of the seed JSON
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def count(self) -> int:
        return len(self.received)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.raw is not None:
            return web.Response(status=self.status, body=self.raw)
        if self.status >= 400:
            return web.json_response({"error": f"{self.name} failed"}, status=self.status)
        prompt: Any = request.query.get("q")
        if body:
            sent = orjson.loads(body)
            prompt = sent.get("input", sent) if isinstance(sent, dict) else sent
        answer = {"data": {"items": [{"attributes": {"answer": f"{self.name}: {prompt}"}}]}}
        return web.json_response(answer)
