"""Talk to a running gateway over HTTP (httpx); every failure becomes an exit code.

Exit codes (docs/cli.md): 0 done; 1 the gateway answered with an error (or a thing asked for
does not exist); 2 usage error (argparse's own code, and local input that cannot be used);
3 the gateway cannot be reached; 4 the gateway refused the credentials (401/403).
"""

import argparse
import json
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import httpx

OK, ERROR, USAGE, UNREACHABLE, AUTH = 0, 1, 2, 3, 4

DEFAULT_URL = "http://127.0.0.1:8007"
# Admin calls are quick; a chat waits as long as the gateway's own deadline allows.
_ADMIN_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_CHAT_TIMEOUT = httpx.Timeout(None, connect=5.0)

Auth = Literal["admin", "inference", "none"]


class Failed(Exception):
    """A command cannot go on: its message for stderr and its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def connection_options() -> argparse.ArgumentParser:
    """The options every client command takes: --url, --token, --api-key, --json."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--url", help=f"the gateway's base URL (GATEWAY_URL, default {DEFAULT_URL})"
    )
    parser.add_argument("--token", help="the admin token (GATEWAY_ADMIN_TOKEN; prefer the env var)")
    parser.add_argument(
        "--api-key", help="an API key, for chat (GATEWAY_API_KEY; prefer the env var)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts, not tables")
    return parser


class Gateway:
    """One gateway, with the credentials the command line and the environment give."""

    def __init__(self, url: str, token: str | None, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._api_key = api_key
        self._http = httpx.Client(base_url=self.url, timeout=_ADMIN_TIMEOUT)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> "Gateway":
        url = getattr(args, "url", None) or environ.get("GATEWAY_URL") or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise Failed(USAGE, f"--url {url!r} must start with http:// or https://")
        token = getattr(args, "token", None) or environ.get("GATEWAY_ADMIN_TOKEN") or None
        key = getattr(args, "api_key", None) or environ.get("GATEWAY_API_KEY") or None
        return cls(url, token, key)

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        auth: Auth = "admin",
        body: Any = None,
        ok: Collection[int] = (200,),
    ) -> Any:
        """Send one request and return its JSON; raise Failed unless its status is in `ok`."""
        try:
            reply = self._http.request(method, path, json=body, headers=self._headers(auth))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if reply.status_code not in ok:
            raise self.refused(reply, auth)
        return _json(reply, self.url)

    @contextmanager
    def stream(self, path: str, body: Any, *, auth: Auth = "inference") -> Iterator[httpx.Response]:
        """POST `body` and yield the response while it streams; raise Failed on an error status."""
        started = False
        try:
            with self._http.stream(
                "POST", path, json=body, headers=self._headers(auth), timeout=_CHAT_TIMEOUT
            ) as reply:
                if reply.status_code != 200:
                    reply.read()
                    raise self.refused(reply, auth)
                started = True
                yield reply
        except httpx.HTTPError as exc:
            if started:
                raise Failed(ERROR, f"the answer from {self.url} broke off: {exc}") from None
            raise self._unreachable(exc) from None

    def _headers(self, auth: Auth) -> dict[str, str]:
        secret = {"admin": self._token, "inference": self._api_key, "none": None}[auth]
        return {"Authorization": f"Bearer {secret}"} if secret else {}

    def refused(self, reply: httpx.Response, auth: Auth) -> Failed:
        """The Failed for an error answer: the gateway's own message, and what to do."""
        message = _message(reply)
        status = f"{reply.status_code} {reply.reason_phrase}".strip()
        if reply.status_code in (401, 403):
            hint = {
                "admin": "set GATEWAY_ADMIN_TOKEN (or pass --token) to the gateway's admin token",
                "inference": "set GATEWAY_API_KEY (or pass --api-key) to an API key "
                "(llm-gateway keys create NAME makes one)",
                "none": "",
            }[auth]
            return Failed(AUTH, f"{self.url} answered {status}: {message}; {hint}")
        return Failed(ERROR, f"{self.url} answered {status}: {message}")

    def _unreachable(self, exc: httpx.HTTPError) -> Failed:
        if isinstance(exc, httpx.TimeoutException):
            reason = "it did not answer in time"
        else:
            reason = str(exc) or type(exc).__name__
        return Failed(
            UNREACHABLE,
            f"cannot reach the gateway at {self.url}: {reason}; is it running "
            "(llm-gateway serve)? set GATEWAY_URL or pass --url to point elsewhere",
        )


def _json(reply: httpx.Response, url: str) -> Any:
    try:
        return reply.json()
    except ValueError:
        raise Failed(
            ERROR, f"{url} answered something that is not JSON: is it an llm-gateway?"
        ) from None


def _message(reply: httpx.Response) -> str:
    """The error message of any route family's error body, else the body's start."""
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:200] or "(no body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for field in ("msg", "reason", "error"):
            if isinstance(body.get(field), str) and body[field]:
                return str(body[field])
    return json.dumps(body)[:200]
