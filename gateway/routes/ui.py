"""The dashboard's files under /ui: plain HTML, CSS and ES modules shipped in the package.

The files themselves hold nothing secret and are public; every figure they show comes from
admin routes (gateway/routes/dashboard.py and the registry's own), called with the admin
token the login form keeps in the tab's sessionStorage. The files are read once, when the
application is built, and only those names are served (no path is ever joined from a
request). Each answer carries a Content-Security-Policy that allows this origin's own
scripts, styles and API calls and nothing else: no inline script, no other site.
"""

from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from gateway.endpoints import Routes
from gateway.errors import NotFound

routes = Routes("system")

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class UiFiles:
    """The dashboard's files by name: (content, Content-Type)."""

    files: dict[str, tuple[bytes, str]]

    @classmethod
    def load(cls) -> "UiFiles":
        folder = resources.files("gateway") / "ui"
        files = {}
        for item in folder.iterdir():
            suffix = "." + item.name.rpartition(".")[2]
            if item.is_file() and suffix in _TYPES:
                files[item.name] = (item.read_bytes(), _TYPES[suffix])
        return cls(files)


UI = web.AppKey("ui_files", UiFiles)


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[UI].files.get(name)
    if found is None:
        raise NotFound(f"the dashboard has no file {name[:100]!r}; open /ui/")
    body, content_type = found
    response = web.Response(body=body, headers=_HEADERS)
    response.headers["Content-Type"] = content_type
    return response


@routes.get("/ui", access="public", media_type="text/html")
async def ui_root(request: web.Request) -> web.Response:
    """The dashboard (redirects to /ui/)."""
    # Relative, so the dashboard also works behind a proxy that serves it under a prefix.
    raise web.HTTPFound("ui/")


@routes.get("/ui/", access="public", media_type="text/html")
async def ui_index(request: web.Request) -> web.Response:
    """The dashboard's page; its data comes from admin routes, with the admin token."""
    return _serve(request, "index.html")


@routes.get("/ui/{name}", access="public", media_type="text/html")
async def ui_file(request: web.Request) -> web.Response:
    """A file of the dashboard (a script, a style sheet, an icon)."""
    return _serve(request, request.match_info["name"])
