"""Keep an in-memory view in step with the registry: snapshot, then change events.

The follower subscribes before it takes the snapshot, so no event can fall between the two;
events at or below the snapshot's version are skipped, a gap triggers a fresh snapshot, and a
periodic version check catches events lost while the connection was silently down. When Redis
goes away it retries with back-off and resyncs on return; the view keeps serving meanwhile.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from registry.errors import StoreUnavailable
from registry.model_settings import ModelRecord
from registry.models import Change, Health, WorkerRecord
from registry.store import REDIS_ERRORS, RegistryStore, parse_change

log = logging.getLogger(__name__)

_RESYNC = object()


class ViewSink(Protocol):
    """What the follower feeds: an in-memory view of the registry."""

    @property
    def version(self) -> int: ...

    def load(
        self,
        version: int,
        records: list[WorkerRecord],
        health: dict[str, Health],
        models: list[ModelRecord],
    ) -> None: ...

    def apply(self, change: Change) -> None: ...

    def set_connected(self, connected: bool, reason: str) -> None: ...


class Follower:
    """Feed a ViewSink from a RegistryStore until cancelled."""

    def __init__(
        self,
        store: RegistryStore,
        sink: ViewSink,
        *,
        check_interval_s: float = 5.0,
        max_backoff_s: float = 5.0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._store = store
        self._on_error = on_error
        self._sink = sink
        self._check_interval_s = check_interval_s
        self._max_backoff_s = max_backoff_s
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.resyncs = 0

    def request_resync(self) -> None:
        """Ask for a fresh snapshot (the caller saw a version it cannot place)."""
        self._inbox.put_nowait(_RESYNC)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Follow until cancelled or until `stop` is set."""
        stop = stop or asyncio.Event()
        backoff_s = 0.05
        while not stop.is_set():
            try:
                await self._follow(stop)
            except (*REDIS_ERRORS, StoreUnavailable) as exc:
                self._sink.set_connected(False, f"registry store unreachable: {exc}")
                if self._on_error is not None:
                    self._on_error(exc)
                log.warning("registry store unreachable (%s); retrying in %.1fs", exc, backoff_s)
                await pause(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
            except Exception as exc:
                # A bug must not leave the process with a frozen view and no word of why:
                # say it loudly, and start over from a fresh snapshot.
                self._sink.set_connected(False, f"registry follower failed: {exc!r}")
                log.exception("registry follower failed; resyncing in %.1fs", backoff_s)
                await pause(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
            else:  # pragma: no cover - _follow only returns by raising
                backoff_s = 0.05

    async def _follow(self, stop: asyncio.Event) -> None:
        pubsub = self._store.redis.pubsub(ignore_subscribe_messages=True)
        reader: asyncio.Task[None] | None = None
        try:
            await pubsub.subscribe(self._store.keys.events)
            self._inbox = asyncio.Queue()
            reader = asyncio.create_task(self._read(pubsub))
            await self._resync()
            self._sink.set_connected(True, "")
            while not stop.is_set():
                try:
                    item = await asyncio.wait_for(self._inbox.get(), self._check_interval_s)
                except TimeoutError:
                    if await self._store.version() != self._sink.version:
                        await self._resync()
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item is _RESYNC:
                    await self._resync()
                    continue
                change = parse_change(item)
                if change is None or change.v <= self._sink.version:
                    continue
                if change.v != self._sink.version + 1:
                    await self._resync()
                    continue
                self._sink.apply(change)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            # The connection may already be gone; then there is nothing left to release.
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _read(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self._inbox.put_nowait(message["data"])
        except REDIS_ERRORS as exc:
            self._inbox.put_nowait(exc)

    async def _resync(self) -> None:
        snapshot = await self._store.snapshot()
        self._sink.load(snapshot.version, snapshot.records, snapshot.health, snapshot.models)
        self.resyncs += 1


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
