"""The HTTP/1.1 client the gateway calls workers with: keep-alive pools and llhttp parsing.

aiohttp's client was the largest single cost of a proxied request (bench/, py-spy): it builds a
request object, a response object, cookie and redirect handling, a payload writer and a stream
reader for every call. Calling a worker needs much less: one pooled connection per call, the
request written as one buffer, the answer parsed by llhttp (httptools) straight from the
socket callbacks into the response. Streamed answers are handed on chunk by chunk as they
arrive, with reading paused while the consumer lags behind.

Deliberately not here: redirects (a worker that redirects is misconfigured), cookies (one
client's cookie must never reach another), proxies from the environment, HTTP/2.
Compressed answers (gzip, deflate) are decompressed, in case a template asks for them.
"""

from gateway.http1.client import Client, Origin, parse_url
from gateway.http1.response import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    HTTPClientError,
    ReadTimeout,
    Response,
    Sink,
)

__all__ = [
    "BadResponse",
    "Client",
    "ConnectFailed",
    "Disconnected",
    "HTTPClientError",
    "Origin",
    "ReadTimeout",
    "Response",
    "Sink",
    "parse_url",
]
