"""The event loop every benchmark process runs on: uvloop where installed, as the gateway."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    """Return a new uvloop loop, or asyncio's where uvloop is missing."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new loop from `new_loop`."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)
