"""Which model answers a request: an alias's choice, then the model, then its fallbacks.

A request names a model. When the name is an alias (a weighted list of models), one of them
is chosen for the request: by its session when it names one (`X-Session-ID` or the OpenAI
`user` field), so a conversation stays on one arm of an A/B test, in every process; else by
smooth weighted round-robin, so the shares are exact rather than random.

The chosen model's `fallbacks` stand behind it, in order, then the alias's own. A failure of
a kind the settings list in `fallback_on` moves the request to the next of them:

    no_worker         no worker registered, healthy and not ejected (503, or 404), or none
                      that can serve the request (422: embeddings, tools to a template)
    overloaded        every healthy worker is at its max_concurrency: with a fallback behind
                      it the request does not queue, it goes to the fallback at once (429);
                      or every worker tried answered 429 itself (a hosted API's rate limit)
    failed            every try failed: worker errors, timeouts, unreadable answers (502, 504)
    context_too_long  a worker said the prompt is longer than its context window (400)

Fallbacks are not followed further (a fallback's own fallbacks are not used), so a chain is
short and cannot loop. When every model of the chain failed, the last failure is raised, its
message naming what each model said. The model that answered is returned with the answer:
it goes into the `X-Gateway-Model` header and the access log, while the answer itself keeps
the name the client asked for.
"""

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.affinity import Affinity, digest, mix64
from gateway.calls import Call
from gateway.errors import (
    ContextTooLong,
    GatewayError,
    InvalidRequest,
    NoHealthyWorker,
    Overloaded,
    UnknownModel,
    UpstreamError,
    UpstreamTimeout,
    WorkerRateLimited,
)
from gateway.failover import Answer, Failover
from gateway.pool import Pool
from gateway.resume import Resuming, resumable
from gateway.router import Router
from gateway.stream import Stream
from registry import TRIGGERS, ModelSettings, Trigger

T = TypeVar("T")

_KINDS: tuple[tuple[type[GatewayError], Trigger], ...] = (
    (ContextTooLong, "context_too_long"),
    (NoHealthyWorker, "no_worker"),
    (UnknownModel, "no_worker"),
    (InvalidRequest, "no_worker"),  # no worker of the model serves the operation
    (Overloaded, "overloaded"),
    (WorkerRateLimited, "overloaded"),  # every worker tried answered 429 itself
    (UpstreamError, "failed"),
    (UpstreamTimeout, "failed"),
)
_ALL: frozenset[Trigger] = frozenset(TRIGGERS)


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    """An answer, and the model that gave it."""

    result: T
    model: str


@dataclass(frozen=True, slots=True)
class _Step:
    model: str
    via: frozenset[Trigger]  # the failures of the step before that lead here


class Dispatcher:
    """Answers a call for a model name: alias, model, fallbacks (see the module docstring)."""

    def __init__(self, router: Router, failover: Failover) -> None:
        self._router = router
        self._failover = failover
        self._arms: dict[str, dict[str, int]] = {}  # alias -> smooth weighted round-robin state

    async def complete(self, model: str, call: Call, affinity: Affinity | None) -> Served[Answer]:
        """Get a whole answer from the model named, or from the one standing in for it."""

        async def go(pool: Pool, queue: bool) -> Answer:
            return await self._failover.complete(pool, call, affinity=affinity, queue=queue)

        return await self._run(model, affinity, go)

    async def open_stream(
        self, model: str, call: Call, affinity: Affinity | None
    ) -> Served[Stream | Resuming]:
        """Start a streamed answer from the model named, or from the one standing in for it;
        one that can go on from another worker if its own fails midway, where the model's
        settings say so (gateway/resume.py)."""
        failover = self._failover

        async def go(pool: Pool, queue: bool) -> Stream | Resuming:
            settings = self._router.settings_of(pool.model)
            if settings is None or not settings.resume_streams or not resumable(call):
                return await failover.open_stream(pool, call, affinity=affinity, queue=queue)
            stream = await failover.open_stream(
                pool, call, affinity=affinity, queue=queue, translate=True
            )
            return Resuming(failover, pool, call, stream, settings.resume_tries)

        return await self._run(model, affinity, go)

    async def _run(
        self,
        model: str,
        affinity: Affinity | None,
        go: Callable[[Pool, bool], Awaitable[T]],
    ) -> Served[T]:
        steps = self.chain(model, affinity)
        said: list[str] = []
        index = 0
        while True:
            step = steps[index]
            # Queue only where no fallback would take over from a full pool.
            queue = not any("overloaded" in later.via for later in steps[index + 1 :])
            try:
                return Served(await go(self._pool(step.model), queue), step.model)
            except GatewayError as exc:
                kind = _kind(exc)
                if kind is None or not self._router.loaded:
                    raise
                said.append(exc.message)
                following = (j for j in range(index + 1, len(steps)) if kind in steps[j].via)
                upcoming = next(following, None)
                if upcoming is None:
                    if len(said) > 1:
                        exc.message = "; then ".join(said)
                        exc.args = (exc.message,)
                    raise
                index = upcoming

    def chain(self, model: str, affinity: Affinity | None) -> list[_Step]:
        """The models that may answer for `model`, in order, each with how it is reached."""
        router = self._router
        named = router.settings_of(model)
        first = self._arm(model, named, affinity) if named is not None and named.alias else model
        steps = [_Step(first, _ALL)]
        seen = {first}
        levels = [router.settings_of(first)]
        if first != model:
            levels.append(named)
        for settings in levels:
            if settings is None:
                continue
            via = frozenset(settings.fallback_on)
            for name in settings.fallbacks:
                alias = router.alias_of(name)
                target = self._arm(name, alias, affinity) if alias is not None else name
                if target not in seen:
                    seen.add(target)
                    steps.append(_Step(target, via))
        return steps

    def _pool(self, model: str) -> Pool:
        router = self._router
        pool = router.pool(model)
        if pool is not None:
            return pool
        raise router.nowhere(model)

    def _arm(self, alias: str, settings: ModelSettings | None, affinity: Affinity | None) -> str:
        """Choose the model an alias sends this request to."""
        targets = [t for t in (settings.alias or []) if t.weight > 0] if settings else []
        if not targets:
            return alias
        if affinity is not None and affinity.session is not None:
            # Weighted rendezvous on the session: the same arm for it everywhere, in weight
            # ratio over sessions, and a weight change moves only the sessions it must.
            key = digest("arm\x1f" + affinity.session)

            def score(model: str, weight: int) -> float:
                unit = ((mix64(key ^ digest(model)) >> 11) + 0.5) * 2.0**-53
                return -weight / math.log(unit)

            return max(targets, key=lambda t: score(t.model, t.weight)).model
        current = self._arms.setdefault(alias, {})
        total = 0
        best = None
        for target in targets:
            value = current.get(target.model, 0) + target.weight
            current[target.model] = value
            total += target.weight
            if best is None or value > current[best]:
                best = target.model
        assert best is not None
        current[best] -= total
        if len(current) > len(targets):  # an arm was dropped from the alias
            names = {t.model for t in targets}
            self._arms[alias] = {k: v for k, v in current.items() if k in names}
        return best


def _kind(exc: GatewayError) -> Trigger | None:
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    return None
