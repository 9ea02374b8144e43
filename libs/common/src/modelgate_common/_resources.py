"""What every service's lifespan opens: a Redis client, the token verifier (and its
copy of the revocation set) and the admission of the worker, with their readiness
checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ._admission import Admission
from ._health import CheckResult, HealthChecks
from ._redis import create_redis, redis_ok
from ._security import TokenVerifier
from ._settings import CommonSettings

log = logging.getLogger("modelgate.resources")


async def periodically(
    stop: asyncio.Event, interval: float, work: Callable[[], Awaitable[object]]
) -> None:
    """Run ``work`` every ``interval`` seconds until ``stop`` is set (a lifespan task; an
    event rather than a cancellation, which a Redis call in flight may absorb)."""
    while not stop.is_set():
        await work()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


@asynccontextmanager
async def shared_resources(app: FastAPI, settings: CommonSettings) -> AsyncIterator[None]:
    redis = create_redis(settings)
    verifier = TokenVerifier(settings, redis)
    try:
        verifier.keyset.load()
    except (OSError, ValueError) as exc:
        # Not fatal: readiness reports it and the key set is re-read on demand.
        log.error("cannot load JWKS", extra={"path": str(settings.jwks_path), "reason": str(exc)})
    admission = Admission(
        settings.ratelimit,
        settings.redis_url,
        verifier,
        settings.redis_connect_timeout,
        settings.redis_socket_timeout,
        settings.redis_credentials(),
    )
    app.state.redis = redis
    app.state.verifier = verifier
    app.state.admission = admission
    checks: HealthChecks = app.state.health

    async def redis_check() -> CheckResult:
        if await redis_ok(redis):
            return CheckResult("ok")
        return CheckResult("degraded", "redis unreachable: per-worker fallbacks in use")

    async def keys_check() -> CheckResult:
        if len(verifier.keyset) == 0:
            return CheckResult("fail", "no token verification keys")
        return CheckResult("ok", f"{len(verifier.keyset)} verification keys")

    checks.add("redis", redis_check)
    checks.add("token_keys", keys_check)
    checks.add("rate_limits", admission.health)
    stop = asyncio.Event()
    # Each worker's copy of the revocation set, kept for a Redis outage.
    mirror = asyncio.create_task(
        periodically(stop, settings.revocation_mirror_seconds, verifier.refresh_mirror)
    )
    try:
        yield
    finally:
        stop.set()
        await mirror
        await admission.aclose()
        await redis.aclose()
