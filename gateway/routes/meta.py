"""What the gateway says about itself: Prometheus metrics and the OpenAPI document."""

from aiohttp import web

from gateway.endpoints import Routes
from gateway.openapi import OPENAPI
from gateway.state import METRICS

routes = Routes("system")


@routes.get("/metrics", access="metrics", media_type="text/plain")
async def metrics(request: web.Request) -> web.Response:
    """Every metric of the gateway in the Prometheus text format."""
    scrape = request.app[METRICS]
    response = web.Response(body=scrape.scrape())
    response.headers["Content-Type"] = scrape.content_type
    return response


@routes.get("/openapi.json", access="public")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
