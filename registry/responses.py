"""Stored OpenAI Responses: each response with its input and the conversation up to it.

One string key per response (registry/keys.py `response`), written whole with its TTL in one
command, so a record is there entirely or not at all; any gateway process reads it to continue
the conversation (`previous_response_id`). A record holds the whole conversation so far, so a
continuation is one read, never a walk down a chain; its size is bounded (`MAX_MESSAGES`,
`MAX_RECORD_BYTES`) and a turn that would pass the bound is refused, never cut silently.
A record belongs to the API key that made it ("" in open mode); another key is told it does
not exist.
"""

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from registry.errors import StoreUnavailable
from registry.keys import Keys
from registry.store import REDIS_ERRORS

MAX_MESSAGES = 2000  # messages a stored conversation may hold
MAX_RECORD_BYTES = 8 * 1024 * 1024  # one stored response, its input and history, as JSON


class ConversationTooLong(ValueError):
    """A stored conversation would pass its bounds."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    owner: str
    response: dict[str, Any]
    input: list[dict[str, Any]]  # this turn's input, as OpenAI chat messages
    history: list[dict[str, Any]]  # the whole conversation after this turn, likewise


class ResponseStore:
    def __init__(self, redis: Redis, prefix: str, ttl_s: float) -> None:
        self._redis = redis
        self._keys = Keys(prefix)
        self._ttl_ms = int(ttl_s * 1000)

    async def put(self, stored: StoredResponse) -> None:
        if len(stored.history) > MAX_MESSAGES:
            raise ConversationTooLong(
                f"the conversation has {len(stored.history)} messages, over the {MAX_MESSAGES} "
                "a stored response may hold; start a new one (no previous_response_id)"
            )
        data = orjson.dumps(
            {
                "owner": stored.owner,
                "response": stored.response,
                "input": stored.input,
                "history": stored.history,
            }
        )
        if len(data) > MAX_RECORD_BYTES:
            raise ConversationTooLong(
                f"the conversation is {len(data)} bytes, over the {MAX_RECORD_BYTES} a stored "
                "response may hold; start a new one (no previous_response_id)"
            )
        key = self._keys.response(stored.response["id"])
        try:
            await self._redis.set(key, data, px=self._ttl_ms)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(
                f"cannot store the response: Redis is unreachable ({exc})"
            ) from exc

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The stored response, or None when there is none or it is another key's."""
        try:
            data = await self._redis.get(self._keys.response(response_id))
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(
                f"cannot read the response: Redis is unreachable ({exc})"
            ) from exc
        if data is None:
            return None
        doc = orjson.loads(data)
        if doc.get("owner", "") != owner:
            return None
        return StoredResponse(doc["owner"], doc["response"], doc["input"], doc["history"])

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        try:
            return bool(await self._redis.delete(self._keys.response(response_id)))
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(
                f"cannot delete the response: Redis is unreachable ({exc})"
            ) from exc
