"""Calling workers: render the request, send it on the pooled session, extract the answer.

`complete` is the one place where aiohttp client errors and timeouts are caught. An attempt
that fails before anything reached the client (connect error, timeout, 5xx, 429) moves on to
the next worker of the pool, up to `max_tries`; the error finally raised lists every attempt.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.errors import NoHealthyWorker, UpstreamError, UpstreamTimeout
from gateway.router import Pool, Worker
from templates import ExtractError

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    worker: Worker
    tries: int
    upstream_s: float


class _AttemptFailed(Exception):
    def __init__(self, reason: str, *, retryable: bool, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.timed_out = timed_out


class Upstream:
    """Sends requests to workers over one bounded, keep-alive `ClientSession`."""

    def __init__(
        self, session: aiohttp.ClientSession, *, max_tries: int, max_response_bytes: int
    ) -> None:
        self._session = session
        self._max_tries = max_tries
        self._max_response_bytes = max_response_bytes
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def complete(self, pool: Pool, values: Mapping[str, Any]) -> Answer:
        """Get the answer text for `values` from a worker of `pool`, failing over if needed."""
        candidates = pool.candidates(self._max_tries)
        if not candidates:
            raise NoHealthyWorker(
                f"model {pool.model!r} has no worker to send the request to",
                headers={"Retry-After": "1"},
            )
        failures: list[str] = []
        timed_out = True
        for tries, worker in enumerate(candidates, start=1):
            started = time.perf_counter()
            stats = worker.stats
            stats.in_flight += 1
            try:
                text = await self._attempt(worker, values)
            except _AttemptFailed as exc:
                stats.failed(exc.reason)
                failures.append(f"{worker.label}: {exc.reason}")
                timed_out = timed_out and exc.timed_out
                if not exc.retryable:
                    break
                continue
            finally:
                stats.in_flight -= 1
            stats.succeeded()
            return Answer(text, worker, tries, time.perf_counter() - started)
        summary = "; ".join(failures)
        noun = "try" if len(failures) == 1 else f"all {len(failures)} tries"
        message = f"model {pool.model!r}: {noun} failed: {summary}"
        if timed_out:
            raise UpstreamTimeout(message)
        raise UpstreamError(message)

    async def _attempt(self, worker: Worker, values: Mapping[str, Any]) -> str:
        request = worker.plan.render(values)
        timeout_s = worker.record.timeout_s
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=self._timeout(timeout_s),
            ) as response:
                raw = await self._read(response)
                status = response.status
        except TimeoutError as exc:
            raise _AttemptFailed(
                f"no answer within {timeout_s:g}s (the worker's timeout_s)",
                retryable=True,
                timed_out=True,
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise _AttemptFailed(
                f"could not reach the worker ({_describe(exc)})", retryable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise _AttemptFailed(f"bad HTTP exchange ({_describe(exc)})", retryable=True) from exc
        if status >= 400:
            snippet = raw[:200].decode("utf-8", errors="replace")
            raise _AttemptFailed(
                f"worker answered HTTP {status}: {snippet}",
                retryable=status in _RETRYABLE_STATUS,
            )
        try:
            return worker.extractor.extract(raw)
        except ExtractError as exc:
            raise _AttemptFailed(
                f"{exc}; fix the worker or its response_extract", retryable=False
            ) from exc

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_response_bytes
        if response.content_length is not None and response.content_length > limit:
            raise _AttemptFailed(
                f"response of {response.content_length} bytes is over the {limit}-byte limit",
                retryable=False,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _AttemptFailed(f"response is over the {limit}-byte limit", retryable=False)
            chunks.append(chunk)
        return b"".join(chunks)

    def _timeout(self, timeout_s: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(total=timeout_s)
        return timeout


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


__all__ = ["Answer", "Upstream"]
