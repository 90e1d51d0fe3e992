"""Make the Redis client for a URL: a single server, a Sentinel-managed master, or a Cluster.

    redis://[:password@]host:6379/0            a server (rediss:// for TLS)
    unix:///path/to/redis.sock?db=0            a server on a Unix socket
    redis+sentinel://[:password@]host:26379,host2:26379/service[/db]
                                               the master Sentinel names `service`
    redis+cluster://[:password@]host:7000      a Redis Cluster (any node; the rest is found)

The `+sentinel` and `+cluster` forms also exist with `rediss` for TLS.
"""

from typing import Any, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


def check_url(url: str) -> str:
    """Return `url` if its scheme is one we connect to, else raise ValueError saying which are."""
    scheme = url.partition("://")[0].lower()
    if "://" not in url or scheme not in SCHEMES:
        raise ValueError(
            f"unsupported Redis URL {url.split('@')[-1]!r}: use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    return url


def connect(
    url: str,
    *,
    connect_timeout_s: float,
    socket_timeout_s: float = 10.0,
    max_connections: int = 64,
) -> Redis:
    """Return a client for `url` (it connects lazily, on the first command).

    At most `max_connections` are open to a server; a command beyond that waits for a free
    connection (up to `socket_timeout_s`) instead of failing at once, so a burst of writes is
    slowed down, not refused.
    """
    check_url(url)
    scheme = url.partition("://")[0].lower()
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s,
    }
    if scheme.endswith("+cluster"):
        plain = scheme.replace("+cluster", "") + url[len(scheme) :]
        return cast(Redis, RedisCluster.from_url(plain, max_connections=max_connections, **options))
    if scheme.endswith("+sentinel"):
        return _sentinel_master(url, scheme.startswith("rediss"), options)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout_s,
        health_check_interval=15,
        **options,
    )
    return Redis.from_pool(pool)  # owned: closing the client disconnects its connections


def _sentinel_master(url: str, tls: bool, options: dict[str, Any]) -> Redis:
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port) if port.isdigit() else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a redis+sentinel:// URL needs the service name: .../mymaster[/db]")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        sentinel_kwargs={"password": password, **options},
        password=password,
        ssl=tls,
        **options,
    )
    return cast(Redis, sentinel.master_for(service, db=db))
