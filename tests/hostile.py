"""A worker that misbehaves on purpose, on a raw socket: what no well-behaved HTTP server sends.

`RawWorker(answer)` listens on 127.0.0.1; for each request it reads the head and body, then
hands them to `answer(request, writer)`, which writes whatever bytes the test needs (a status
line one byte a second, endless `100 Continue`, a header of megabytes, a gzip bomb...).
`greeting` is sent the moment a connection opens, before any request (an SSH banner).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class RawRequest:
    line: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]


Answer = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawWorker:
    answer: Answer
    greeting: bytes | None = None
    received: list[RawRequest] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            if self.greeting is not None:
                writer.write(self.greeting)
                await writer.drain()
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                headers = {}
                for item in rest:
                    if ":" in item:
                        name, _, value = item.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = RawRequest(line, headers, body)
                self.received.append(request)
                await self.answer(request, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()


def leaks(text: str, secret: str, piece: int = 8) -> bool:
    """Whether any `piece` characters in a row of `secret` appear in `text`."""
    return any(secret[i : i + piece] in text for i in range(len(secret) - piece + 1))
