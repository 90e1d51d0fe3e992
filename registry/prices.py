"""The price table: what a model's tokens cost, per million prompt, completion and cached tokens.

Prices come from the config file (`[prices.NAME]` tables) and from the admin API, which
stores them in Redis; a model's price in Redis wins over the file's, and deleting it there
brings the file's back. Costs are in the table's own currency (whatever the operator wrote).
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from registry.keys import Keys
from registry.store import guard

PerMillion = Annotated[float, Field(ge=0, le=1_000_000_000)]


class Price(BaseModel):
    """A model's price per million tokens; cached prompt tokens cost `cached` (else `prompt`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: PerMillion = 0.0
    completion: PerMillion = 0.0
    cached: PerMillion | None = None

    def cost(self, prompt: int, completion: int, cached: int | None) -> float:
        """The cost of one answer's tokens (prompt tokens include the cached ones)."""
        hits = min(cached or 0, prompt)
        cached_price = self.prompt if self.cached is None else self.cached
        return (
            (prompt - hits) * self.prompt + hits * cached_price + completion * self.completion
        ) / 1_000_000


class NewPrice(Price):
    """Body of POST /api/server/prices: a model and its price."""

    model: Annotated[str, Field(min_length=1, max_length=200)]


class PriceStore:
    """The prices set through the admin API (a hash in Redis)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)

    async def all(self) -> dict[str, Price]:
        """Return every stored price by model."""
        raw: dict[Any, Any] = await guard(lambda: self.redis.hgetall(self.keys.prices))
        return {_text(model): Price.model_validate_json(blob) for model, blob in raw.items()}

    async def put(self, model: str, price: Price) -> None:
        await guard(lambda: self.redis.hset(self.keys.prices, model, price.model_dump_json()))

    async def delete(self, model: str) -> bool:
        """Remove the stored price of `model`; return whether there was one."""
        removed: int = await guard(lambda: self.redis.hdel(self.keys.prices, model))
        return removed > 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
