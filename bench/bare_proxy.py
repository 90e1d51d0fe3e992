"""The floor of our stack: the smallest aiohttp reverse proxy in front of one target URL.

One pooled `ClientSession`, the request body forwarded as bytes, the target's body and status
answered back: no parsing, no templates, no registry. Whatever the gateway costs above this
is ours to explain. Run it with `python -m bench.bare_proxy --port P --target URL`.
"""

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench import loop

_SESSION = web.AppKey("session", aiohttp.ClientSession)
_TARGET = web.AppKey("target", str)


async def _forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[_SESSION].post(
        request.app[_TARGET], data=body, headers={"Content-Type": "application/json"}
    ) as upstream:
        answer = await upstream.read()
        return web.Response(body=answer, status=upstream.status, content_type="application/json")


async def _session(app: web.Application) -> AsyncIterator[None]:
    # The same pool shape as the gateway's: bounded, keep-alive, no per-request timeout.
    connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=30)
    app[_SESSION] = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0)
    )
    try:
        yield
    finally:
        await app[_SESSION].close()


def create_app(target: str) -> web.Application:
    """Return the proxy application forwarding every request to `target`."""
    app = web.Application()
    app[_TARGET] = target
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp reverse proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="URL every request is forwarded to")
    args = parser.parse_args()
    event_loop = loop.new_loop()
    asyncio.set_event_loop(event_loop)
    web.run_app(
        create_app(args.target),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=event_loop,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
