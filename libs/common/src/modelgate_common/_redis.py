"""Redis clients with short timeouts, so a dead Redis costs milliseconds, not minutes."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._settings import CommonSettings


def create_redis(settings: CommonSettings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.redis_url,
        **settings.redis_credentials(),
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retry_on_timeout=False,
        # No retries: callers decide what an unreachable Redis means (fallback,
        # 503, fail-open), and a retry would only multiply the timeout.
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=False,
    )


async def redis_ok(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except Exception:  # any failure means "not reachable now"
        return False


class CircuitBreaker:
    """Keeps a worker off a failing Redis for ``cooldown`` seconds after each failure."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self._open_until = 0.0
        self.degraded = False

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    @property
    def retry_in(self) -> float:
        return max(0.0, self._open_until - time.monotonic())

    def trip(self) -> bool:
        """Record a failure; True when this starts an outage (worth one log line)."""
        started = not self.degraded
        self.degraded = True
        self._open_until = time.monotonic() + self.cooldown
        return started

    def close(self) -> bool:
        """Record a success; True when this ends an outage."""
        ended = self.degraded
        self.degraded = False
        self._open_until = 0.0
        return ended
