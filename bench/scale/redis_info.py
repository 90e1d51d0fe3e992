"""What the registry costs Redis: used_memory and the size of the registry's keys."""

from typing import Any

import redis

from registry.keys import Keys


def client(url: str) -> redis.Redis:
    """Return a synchronous client for the benchmark's Redis."""
    return redis.Redis.from_url(url, socket_timeout=30.0)


def used_memory(conn: redis.Redis) -> int:
    """Return INFO memory used_memory, in bytes."""
    info: dict[str, Any] = conn.info("memory")
    return int(info["used_memory"])


def key_bytes(conn: redis.Redis, prefix: str) -> dict[str, int]:
    """Return MEMORY USAGE (every element sampled) of the registry's hashes and its indexes."""
    keys = Keys(prefix)
    sizes = {
        "workers_hash": conn.memory_usage(keys.workers, samples=0) or 0,
        "health_hash": conn.memory_usage(keys.health, samples=0) or 0,
    }
    index_total = 0
    for key in conn.scan_iter(match=keys.model_prefix + "*", count=1000):
        index_total += conn.memory_usage(key, samples=0) or 0
    sizes["model_index_sets"] = index_total
    return sizes


def probe_leader_pid(conn: redis.Redis, prefix: str) -> int | None:
    """Return the pid of the gateway holding the probe lease (owner `host:pid:token`)."""
    owner = conn.get(Keys(prefix).probe_lease)
    if not owner:
        return None
    text = owner.decode() if isinstance(owner, bytes) else str(owner)
    parts = text.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
