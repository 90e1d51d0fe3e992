"""Model settings: how one model's requests are balanced, where they fall back, or an alias.

A model's settings come from the gateway's config file (`[models.NAME]`) or from the admin
API (`PUT /api/server/models/{name}`, stored in Redis); a stored record wins over the file's
for the same name. Settings are optional: a model without any is balanced by the gateway's
default strategy and has no fallbacks.

    balancing     how the model's workers share its requests (default: the gateway's)
    fallbacks     other models to answer with, in order, when this one cannot
    fallback_on   which failures send a request to the fallbacks (default: all of them)
    alias         the name is only a weighted list of other models (canary, A/B)
    prefix_chars  `prefix` balancing: how much of the prompt's start picks the worker
    max_load_ratio  `prefix` balancing: a worker above this times the mean load spills over
    min_spill_load  `prefix` balancing: ... but never below this many requests in flight
    resume_streams  a stream whose worker fails midway is continued by another worker
    resume_tries    how many times one stream may be resumed
"""

import re
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelName = Annotated[str, Field(min_length=1, max_length=200)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
Balancing = Literal["round_robin", "weighted", "least_outstanding", "least_load", "prefix"]

# What sends a request on to the model's fallbacks:
#   no_worker         no worker of the model is registered, healthy and not ejected
#   overloaded        every healthy worker is at its max_concurrency (no queueing then), or
#                     every worker tried answered 429
#   failed            every try failed (worker errors, timeouts, unreadable answers)
#   context_too_long  a worker said the prompt is longer than its context window
Trigger = Literal["no_worker", "overloaded", "failed", "context_too_long"]
TRIGGERS: tuple[Trigger, ...] = ("no_worker", "overloaded", "failed", "context_too_long")

MAX_FALLBACKS = 8
MAX_ALIASED = 16  # models one alias may name


class AliasTarget(BaseModel):
    """One model an alias sends requests to, and its share of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelName
    weight: Annotated[int, Field(ge=0, le=10_000)] = 1


class ModelSettings(BaseModel):
    """What an operator sets for one model (the body of PUT /api/server/models/{name})."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    balancing: Balancing | None = None
    fallbacks: Annotated[list[ModelName], Field(max_length=MAX_FALLBACKS)] = Field(
        default_factory=list
    )
    fallback_on: Annotated[list[Trigger], Field(min_length=1)] = Field(
        default_factory=lambda: list(TRIGGERS)
    )
    alias: Annotated[list[AliasTarget], Field(min_length=1, max_length=MAX_ALIASED)] | None = None
    prefix_chars: Annotated[int, Field(ge=16, le=65_536)] = 1024
    max_load_ratio: Annotated[float, Field(ge=1.0, le=100.0)] = 1.25
    min_spill_load: Annotated[int, Field(ge=0, le=100_000)] = 8
    resume_streams: bool = False
    resume_tries: Annotated[int, Field(ge=1, le=5)] = 2

    @field_validator("fallbacks")
    @classmethod
    def _distinct_fallbacks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("fallbacks lists a model more than once")
        return value

    @field_validator("fallback_on")
    @classmethod
    def _distinct_triggers(cls, value: list[Trigger]) -> list[Trigger]:
        return list(dict.fromkeys(value))

    @field_validator("alias")
    @classmethod
    def _alias_targets(cls, value: list[AliasTarget] | None) -> list[AliasTarget] | None:
        if value is None:
            return None
        names = [target.model for target in value]
        if len(set(names)) != len(names):
            raise ValueError("alias lists a model more than once")
        if not any(target.weight > 0 for target in value):
            raise ValueError("alias needs at least one model with a weight above 0")
        return value

    @model_validator(mode="after")
    def _alias_has_no_pool(self) -> "ModelSettings":
        if self.alias is not None and self.resume_streams:
            raise ValueError(
                "an alias has no workers of its own, so resume_streams does not apply to it; "
                "set it on the models it names"
            )
        if self.alias is not None and self.balancing is not None:
            raise ValueError(
                "an alias has no workers of its own, so balancing does not apply to it; "
                "set balancing on the models it names"
            )
        return self

    def checked_for(self, name: str) -> "ModelSettings":
        """Return self; raise ValueError when the settings name `name` itself."""
        if name in self.fallbacks:
            raise ValueError(f"model {name!r} cannot be its own fallback")
        if self.alias is not None and any(t.model == name for t in self.alias):
            raise ValueError(f"alias {name!r} cannot name itself")
        return self


def check_name(name: str) -> str:
    """Return `name`; raise ValueError unless it is a plain model name (as workers have)."""
    if not name or len(name) > 200:
        raise ValueError("a model name has 1 to 200 characters")
    if name != name.strip() or _CONTROL.search(name):
        raise ValueError("a model name must not have surrounding spaces or control characters")
    return name


class ModelRecord(BaseModel):
    """A model's settings as stored in Redis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName
    settings: ModelSettings
    updated_at: float = Field(default_factory=time.time)
