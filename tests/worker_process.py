"""A fake seed-protocol worker as its own process, so tests can SIGKILL and restart it.

    python -m tests.worker_process PORT NAME

Answers POST /api/generate like tests.workers.FakeWorker, GET /health with 200 and
GET /count with the number of generate requests it served.
"""

import sys

from aiohttp import web


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    served = 0

    async def generate(request: web.Request) -> web.Response:
        nonlocal served
        body = await request.json()
        served += 1
        answer = f"{name}: {body['input']}"
        return web.json_response({"data": {"items": [{"attributes": {"answer": answer}}]}})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"served": served})

    app = web.Application()
    app.router.add_post("/api/generate", generate)
    app.router.add_get("/health", health)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda _: print("READY", flush=True))


if __name__ == "__main__":
    main()
