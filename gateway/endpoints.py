"""The catalogue of routes: each route's method, path, family, who may call it and its models.

Route modules declare their routes through `Routes`, which registers the aiohttp handler and
records an `Endpoint` in the same step. Access control, the metrics' route labels and the
OpenAPI document all read this one catalogue, so a route cannot be served without saying who
may call it, and the document cannot miss a route.
"""

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel

# public: anyone; admin: the admin token; inference: an API key (when keys are required);
# metrics: the metrics token (when one is set).
Access = Literal["public", "admin", "inference", "metrics"]
Family = Literal["seed", "openai", "ollama", "anthropic", "admin", "system"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

# `{name:.+}` (a path parameter with its own pattern) is `{name}` in aiohttp's canonical path.
_PATTERN = re.compile(r"\{(\w+):[^{}]+\}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route as the rest of the gateway sees it."""

    method: str
    path: str
    family: Family
    access: Access
    summary: str
    body: type[BaseModel] | None = None  # the pydantic model the handler validates its body as
    answer: type[BaseModel] | None = None  # the shape of a successful answer, when it has one
    streams: bool = False  # may answer a stream (SSE or NDJSON) instead of one JSON document
    media_type: str = "application/json"  # of a successful answer


class Routes:
    """A route table (iterable like aiohttp's `RouteTableDef`) that records each Endpoint."""

    def __init__(self, family: Family) -> None:
        self.family: Family = family
        self._table = web.RouteTableDef()
        self.endpoints: list[Endpoint] = []

    def __iter__(self) -> Iterator[web.AbstractRouteDef]:
        return iter(self._table)

    def get(
        self,
        path: str,
        *,
        access: Access,
        answer: type[BaseModel] | None = None,
        media_type: str = "application/json",
    ) -> Callable[[H], H]:
        return self._route("GET", path, access, None, answer, False, media_type)

    def post(
        self,
        path: str,
        *,
        access: Access,
        body: type[BaseModel] | None = None,
        answer: type[BaseModel] | None = None,
        streams: bool = False,
    ) -> Callable[[H], H]:
        return self._route("POST", path, access, body, answer, streams)

    def put(
        self,
        path: str,
        *,
        access: Access,
        body: type[BaseModel] | None = None,
        answer: type[BaseModel] | None = None,
    ) -> Callable[[H], H]:
        return self._route("PUT", path, access, body, answer, False)

    def delete(
        self, path: str, *, access: Access, answer: type[BaseModel] | None = None
    ) -> Callable[[H], H]:
        return self._route("DELETE", path, access, None, answer, False)

    def _route(
        self,
        method: str,
        path: str,
        access: Access,
        body: type[BaseModel] | None,
        answer: type[BaseModel] | None,
        streams: bool,
        media_type: str = "application/json",
    ) -> Callable[[H], H]:
        def register(handler: H) -> H:
            summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
            canonical = _PATTERN.sub(r"{\1}", path)
            self.endpoints.append(
                Endpoint(
                    method,
                    canonical,
                    self.family,
                    access,
                    summary,
                    body,
                    answer,
                    streams,
                    media_type,
                )
            )
            self._table.route(method, path)(handler)
            return handler

        return register


class Catalogue:
    """Every Endpoint of the application, found by the route a request matched."""

    def __init__(self, tables: Iterable[Routes]) -> None:
        self._by_route: dict[tuple[str, str], Endpoint] = {}
        for table in tables:
            for endpoint in table.endpoints:
                self._by_route[(endpoint.method, endpoint.path)] = endpoint

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._by_route.values())

    def find(self, request: web.Request) -> Endpoint | None:
        """Return the Endpoint `request` matched; None for an unknown route or method."""
        route = request.match_info.route
        resource = route.resource
        if resource is None:
            return None
        method = "GET" if route.method == "HEAD" else route.method
        return self._by_route.get((method, resource.canonical))


CATALOGUE = web.AppKey("catalogue", Catalogue)
