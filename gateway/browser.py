"""Refuse what a web page could send through a local user's browser: CSRF and DNS rebinding.

Any page a user visits can make the browser send "simple" requests (text/plain or form
bodies, no preflight) to the gateway, and a page whose name is rebound to 127.0.0.1 can even
read the answers. `browser_guard(settings)` builds the middleware that refuses them:

- a state-changing request (any method but GET, HEAD, OPTIONS) whose `Origin` is not in
  `allowed_origins` (or, without `Origin`, that says `Sec-Fetch-Site: cross-site`): 403.
  Clients that are not browsers (curl, SDKs, servers) send neither header and pass;
- when the gateway is open (no admin_token) and bound to a loopback address, a request whose
  `Host` is not a loopback name or address nor in `allowed_hosts`: 403. A rebound page sends
  its own name as Host. This covers every route, the probes too;
- a body on an admin route that is not JSON (`application/json` or `+json`): 415. A page
  cannot send a JSON body without a CORS preflight, which the gateway never grants.

The gateway's own pages (the dashboard under /ui) send an `Origin` equal to the `Host` they
were loaded from. Such a same-origin request passes when that Host can be trusted: a loopback
name or address, a name in `allowed_hosts`, or a route that needs credentials the gateway
checks next (the admin token, API keys) and a rebound page does not have. A rebound page is
same-origin with itself too, under its own name, so an open route reached by another name
still needs that origin in `allowed_origins`.

A request without Origin pays a few header lookups: accepted Host values are remembered (the
Host check is one set lookup), and the route catalogue is asked only about a body that is
not JSON.
"""

import ipaddress
import logging

from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from gateway.endpoints import Handler
from gateway.errors import Forbidden, UnsupportedMediaType
from gateway.settings import Settings
from gateway.state import CATALOGUE

log = logging.getLogger(__name__)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Host values remembered as accepted; past this many, the rest are checked each time.
_MAX_REMEMBERED_HOSTS = 64


def browser_guard(settings: Settings) -> Middleware:
    """Return the middleware that refuses browser-borne requests, per `settings`."""
    origins = frozenset(_allowed_origins(settings.allowed_origins))
    names = frozenset(_hostname(entry) for entry in settings.allowed_hosts)
    check_host = settings.admin_token is None and not settings.require_api_keys
    check_host = check_host and is_loopback(settings.host)
    accepted: set[str] = set()

    @web.middleware
    async def browser_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        if check_host:
            host = headers.get("Host")
            # No Host at all is no browser (they always send one): nothing to refuse.
            if host is not None and host not in accepted:
                _check_host(host, names, settings.host)
                if len(accepted) < _MAX_REMEMBERED_HOSTS:
                    accepted.add(host)
        if request.method not in _SAFE_METHODS:
            origin = headers.get("Origin")
            if origin is not None:
                if origin not in origins and _origin(origin) not in origins:
                    _check_page(request, origin, names, settings)
            elif headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
                raise Forbidden(
                    "a cross-site request from a web page (Sec-Fetch-Site: cross-site) without "
                    "an Origin header may not change anything here; a page that should must "
                    "send its Origin, listed in allowed_origins (GATEWAY_ALLOWED_ORIGINS)"
                )
        if request.body_exists:
            content_type = headers.get("Content-Type")
            if not is_json(content_type) and _admin_route(request):
                got = f"{content_type[:100]!r}" if content_type else "none"
                raise UnsupportedMediaType(
                    f"admin routes take JSON bodies only (Content-Type was {got}); "
                    "send the header 'Content-Type: application/json' (curl: "
                    "-H 'Content-Type: application/json', or --json)"
                )
        return await handler(request)

    return browser_middleware


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an IP address) names this machine's loopback interface."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type header value names JSON (application/json or a +json type)."""
    if content_type is None:
        return False
    if content_type == "application/json":
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _check_host(host: str, allowed: frozenset[str], bound: str) -> None:
    name = _hostname(host)
    if is_loopback(name) or name in allowed:
        return
    raise Forbidden(
        f"this gateway is open (no admin_token) and listens on {bound}, so it only answers "
        f"requests addressed to a loopback name, not to Host {host[:200]!r} (a defence against "
        "DNS rebinding); if that name is yours, add it to allowed_hosts (GATEWAY_ALLOWED_HOSTS)"
        ", or set admin_token"
    )


def _check_page(
    request: web.Request, origin: str, names: frozenset[str], settings: Settings
) -> None:
    """Refuse a state-changing request from a page at `origin` (not in allowed_origins)."""
    if not _own_page(origin, request.headers.get("Host")):
        raise Forbidden(
            f"a request from the web page at origin {origin[:200]!r} may not change "
            "anything here; if that page should, add its origin to allowed_origins "
            "(GATEWAY_ALLOWED_ORIGINS)"
        )
    if not _trusted(request, names, settings):
        raise Forbidden(
            f"this gateway's own page at origin {origin[:200]!r} may change things here only "
            "when it is reached by a loopback name, a name in allowed_hosts, or on a route that "
            "needs credentials; add the origin to allowed_origins (GATEWAY_ALLOWED_ORIGINS), "
            "or set admin_token (and require_api_keys)"
        )


def _own_page(origin: str, host: str | None) -> bool:
    """Whether `origin` is the one of a page loaded from this `Host` (scheme aside)."""
    parsed = _origin(origin)
    if parsed is None or host is None:
        return False
    scheme = parsed.partition("://")[0]
    return _origin(f"{scheme}://{host.strip()}") == parsed


def _trusted(request: web.Request, names: frozenset[str], settings: Settings) -> bool:
    """Whether a same-origin request may pass: its Host is ours, or credentials guard it."""
    host = _hostname(request.headers.get("Host", ""))
    if is_loopback(host) or host in names:
        return True
    endpoint = request.app[CATALOGUE].find(request)
    access = endpoint.access if endpoint is not None else "admin"
    if access == "admin":
        return settings.admin_token is not None
    return access == "inference" and settings.require_api_keys


def _hostname(host: str) -> str:
    """Return the name or address part of a Host value: "[::1]:8007" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, _port = host.rpartition(":")
    if colon and ":" not in name:
        host = name
    return host.rstrip(".")


def _origin(value: str) -> str | None:
    """Return an origin in the form browsers send (lower case, no default port), or None."""
    try:
        url = URL(value.strip())
    except ValueError:
        return None
    if (
        url.scheme not in ("http", "https")
        or not url.host
        or url.path not in ("", "/")
        or url.query_string
        or url.fragment
        or url.user is not None
    ):
        return None
    return str(url.origin())


def _allowed_origins(entries: tuple[str, ...]) -> list[str]:
    found = []
    for entry in entries:
        origin = _origin(entry)
        if origin is None:
            log.warning(
                "allowed_origins entry %r is not an origin and matches nothing; write it as "
                "scheme://host[:port], e.g. https://app.example.com or http://localhost:3000",
                entry,
            )
        else:
            found.append(origin)
    return found


def _admin_route(request: web.Request) -> bool:
    endpoint = request.app[CATALOGUE].find(request)
    if endpoint is not None:
        return endpoint.access == "admin"
    # As in access control: a matched route missing from the catalogue counts as admin.
    return request.match_info.route.resource is not None
