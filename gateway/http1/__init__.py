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

Bounds: everything a worker sends is bounded, so a broken or hostile worker costs one failed
exchange, not the event loop or the memory. Per exchange, the answers' heads (interim 1xx
and trailers included) may hold `max_header_bytes` of status, names and values and
`max_headers` fields (else BadResponse); `head_timeout_s` bounds the wait for the final head,
`read_timeout_s` each wait for data, `deadline` the whole exchange (else ReadTimeout); a
compressed answer inflates at most 256 KiB per step, and `Response.read()` stops at
`max_body_bytes` after decompression (else TooLarge, and the connection is closed).
Streamed answers (`chunks()`, `forward()`) are not capped in total: the deadline ends them.
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
    TooLarge,
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
    "TooLarge",
    "parse_url",
]
