"""Redis clients with short timeouts, so a dead Redis costs milliseconds, not minutes."""

from __future__ import annotations

import redis.asyncio as aioredis

from ._settings import CommonSettings


def create_redis(settings: CommonSettings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retry_on_timeout=False,
        health_check_interval=0,
        decode_responses=False,
    )


async def redis_ok(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except Exception:  # any failure means "not reachable now"
        return False
