"""Active health checking and heartbeat expiry, run as background tasks of the app.

Probes run in one gateway process at a time: the holder of a lease in Redis. Another process
takes the lease over within `probe_lease_s` when the holder dies. A probe is a GET of the
worker's `health_url` (2xx is healthy; redirects are not followed, a 3xx is down; the body is
not read) or, without one, a TCP connect to its host and port.
A worker goes down after `probe_fall` failed probes in a row and up after `probe_rise`
good ones; each change is written to Redis and reaches every process as a change event.
The same round reads the load of workers that publish it (gateway/load.py).

The probing process keeps, per worker, its last `PROBE_RUNS` runs of probes with the same
outcome (the dashboard's probe history); other processes have none.

Every process also reaps workers whose heartbeat (`ttl_s`) has lapsed: the reap is one
atomic script, so several processes doing it at once remove each worker once.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.http1 import Client
from gateway.load import LoadReader
from gateway.router import Router
from gateway.settings import Settings
from gateway.worker import Worker
from registry import Health, Lease, RegistryStore, StoreUnavailable, pause

log = logging.getLogger(__name__)

PROBE_RUNS = 10


@dataclass(slots=True)
class ProbeRun:
    """Probes in a row with the same outcome, the newest last (times are time.time())."""

    ok: bool
    reason: str
    first_at: float
    last_at: float
    count: int
    last_ms: float


class HealthChecker:
    """Probe every worker while holding the probe lease; publish state changes."""

    def __init__(
        self,
        store: RegistryStore,
        router: Router,
        session: aiohttp.ClientSession,
        settings: Settings,
        client: Client,
    ) -> None:
        self._store = store
        self._router = router
        self._session = session
        self._settings = settings
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease = Lease(store.redis, store.keys.probe_lease, owner, settings.probe_lease_s)
        self.leader = False
        self._streaks: dict[str, tuple[bool, int]] = {}
        self.probes: dict[str, list[ProbeRun]] = {}  # worker id -> its last runs of probes
        self._limit = asyncio.Semaphore(32)
        self.loads = LoadReader(
            client,
            store,
            router,
            timeout_s=settings.probe_timeout_s,
            max_bytes=settings.metrics_max_bytes,
            interval_s=settings.probe_interval_s,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Probe while holding the lease, until `stop` is set.

        The lease is renewed by its own loop, so a probe round that takes long (thousands of
        workers) cannot let it lapse and hand the probes to another process midway.
        """
        renewing = asyncio.create_task(self._hold_lease(stop), name="probe-lease")
        try:
            interval_s = self._settings.probe_interval_s
            while not stop.is_set():
                if self.leader:
                    started = time.monotonic()
                    await self.probe_all()
                    await pause(stop, max(0.0, interval_s - (time.monotonic() - started)))
                else:
                    self._streaks.clear()
                    await pause(stop, min(interval_s, self._settings.probe_lease_s / 3))
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _hold_lease(self, stop: asyncio.Event) -> None:
        renew_s = self._settings.probe_lease_s / 3
        while not stop.is_set():
            try:
                self.leader = await self.lease.hold()
            except StoreUnavailable:
                self.leader = False
            await pause(stop, renew_s)

    async def stop(self) -> None:
        if self.leader:
            with contextlib.suppress(StoreUnavailable):
                await self.lease.release()

    async def probe_all(self) -> None:
        # Workers with the same probe target (one server registered under several model
        # names, or behind one health URL) share one probe per round.
        groups: dict[str, list[Worker]] = {}
        for count, worker in enumerate(self._router.workers(), start=1):
            groups.setdefault(worker.probe_target, []).append(worker)
            if count % 1000 == 0:
                await asyncio.sleep(0)  # thousands of workers: let requests run meanwhile
        await asyncio.gather(*(self._probe(group) for group in groups.values()))
        # After the health round, so only workers that are up now have their load read.
        await self.loads.read_all()
        size = 2 * sum(len(group) for group in groups.values())
        if len(self._streaks) > size or len(self.probes) > size:
            known = {w.id for group in groups.values() for w in group}
            self._streaks = {k: v for k, v in self._streaks.items() if k in known}
            self.probes = {k: v for k, v in self.probes.items() if k in known}

    async def _probe(self, group: list[Worker]) -> None:
        # The semaphore also bounds the writes below: a round that flips thousands of workers
        # must not take every connection of the Redis pool at once.
        async with self._limit:
            started = time.perf_counter()
            ok, reason = await self._check(group[0])
            took_ms, at = (time.perf_counter() - started) * 1000, time.time()
            for count, worker in enumerate(group, start=1):
                self._remember(worker.id, ok, reason, at, took_ms)
                health = self._count(worker, ok, reason)
                if health is not None:
                    await self._publish(worker, health)
                elif count % 1000 == 0:
                    await asyncio.sleep(0)

    def _remember(self, wid: str, ok: bool, reason: str, at: float, took_ms: float) -> None:
        runs = self.probes.get(wid)
        if runs is None:
            runs = self.probes[wid] = []
        last = runs[-1] if runs else None
        if last is not None and last.ok == ok and last.reason == reason:
            last.last_at, last.count, last.last_ms = at, last.count + 1, took_ms
            return
        runs.append(ProbeRun(ok, reason, at, at, 1, took_ms))
        if len(runs) > PROBE_RUNS:
            del runs[0]

    def _count(self, worker: Worker, ok: bool, reason: str) -> Health | None:
        """Count one probe result; return the worker's new health when it changes."""
        settings = self._settings
        last_ok, count = self._streaks.get(worker.id, (ok, 0))
        count = count + 1 if last_ok == ok else 1
        self._streaks[worker.id] = (ok, count)
        current = worker.stats.active
        if ok and current != "up" and count >= settings.probe_rise:
            return Health(state="up", since=time.time())
        if not ok and current != "down" and count >= settings.probe_fall:
            return Health(state="down", since=time.time(), reason=reason)
        return None

    async def _check(self, worker: Worker) -> tuple[bool, str]:
        timeout_s = self._settings.probe_timeout_s
        url = worker.record.health_url
        try:
            if url:
                timeout = aiohttp.ClientTimeout(total=timeout_s)
                # A followed redirect would let a worker's answer point the gateway at any host
                # (and its up/down state tell whether that host answers). The body is never
                # read: leaving the block releases the response, closing the connection when
                # the body has not all arrived.
                async with self._session.get(
                    url, timeout=timeout, allow_redirects=False
                ) as response:
                    if response.status < 300:
                        return True, ""
                    if response.status < 400:
                        return False, (
                            f"health_url answered a redirect (HTTP {response.status}); "
                            "point health_url at the final URL"
                        )
                    return False, f"health_url answered HTTP {response.status}"
            target = URL(worker.plan.base_url)
            host, port = target.host or "", target.port or 80
            # A bare protocol: no stream reader and writer to build for a connect-and-close.
            connecting = asyncio.get_running_loop().create_connection(asyncio.Protocol, host, port)
            transport, _ = await asyncio.wait_for(connecting, timeout_s)
            transport.close()
            return True, ""
        except TimeoutError:
            return False, f"health probe timed out after {timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"health probe failed: {exc or type(exc).__name__}"

    async def _publish(self, worker: Worker, health: Health) -> None:
        try:
            change = await self._store.set_health(worker.id, health)
        except StoreUnavailable as exc:
            log.warning("could not record health of %s: %s", worker.label, exc)
            return
        if change is not None:
            log.info(
                "worker %s of %s is %s %s",
                worker.label,
                worker.record.model_name,
                health.state,
                health.reason,
            )
            self._router.apply_local(change)


async def reap_expired(store: RegistryStore, interval_s: float, stop: asyncio.Event) -> None:
    """Remove workers whose heartbeat lapsed, every `interval_s`, until `stop` is set."""
    while not stop.is_set():
        try:
            reaped = await store.reap()
            if reaped:
                log.info("removed %d worker(s) whose heartbeat lapsed", len(reaped))
        except StoreUnavailable:
            pass  # the follower reports the outage; reaping resumes with Redis
        await pause(stop, interval_s)
