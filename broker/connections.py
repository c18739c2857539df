"""Opening the mesh's Redis connection with retries and a clear error when it is down."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentmesh.broker.settings import Settings
from agentmesh.schemas.errors import ConnectionFailed


def redis_unreachable(settings: Settings, exc: BaseException) -> ConnectionFailed:
    return ConnectionFailed(
        f"cannot reach Redis at {settings.redis_url} ({exc}). "
        "Start a local mesh with `make up` (or `agentmesh up`), "
        "or point AGENTMESH_REDIS_URL at your Redis server."
    )


async def connect_redis(settings: Settings, *, check: bool = True) -> aioredis.Redis:
    """A Redis client that reconnects (a restarted Redis is picked up on the next command)."""
    # A blocking pool: at its size, callers wait for a connection instead of failing with
    # "Too many connections" (which, under bursts, lost heartbeats and deregistrations).
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=64,
        timeout=max(5.0, settings.connect_timeout),
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=max(5.0, settings.connect_timeout),
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )
    client = aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
    if check:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise redis_unreachable(settings, exc) from None
    return client
