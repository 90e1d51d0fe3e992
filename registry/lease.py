"""A lease in Redis: at most one holder at a time, taken over when the holder stops renewing."""

from redis.asyncio import Redis

from registry.store import guard

# KEYS: lease. ARGV: owner, ttl in ms. Renew if we hold it; take it if nobody does.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""

# KEYS: lease. ARGV: owner. Release only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """Hold `key` as `owner` while `hold()` keeps being called within `ttl_s`."""

    def __init__(self, redis: Redis, key: str, owner: str, ttl_s: float) -> None:
        self.key = key
        self.owner = owner
        self.ttl_s = ttl_s
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take or renew the lease; True while this owner holds it."""
        args = [self.owner, str(int(self.ttl_s * 1000))]
        return bool(await guard(lambda: self._acquire(keys=[self.key], args=args)))

    async def release(self) -> None:
        """Give the lease up so another process can take it at once."""
        await guard(lambda: self._release(keys=[self.key], args=[self.owner]))
