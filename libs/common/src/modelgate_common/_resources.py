"""What every service's lifespan opens: a Redis client and the token verifier,
with their readiness checks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ._health import CheckResult, HealthChecks
from ._redis import create_redis, redis_ok
from ._security import TokenVerifier
from ._settings import CommonSettings

log = logging.getLogger("modelgate.resources")


@asynccontextmanager
async def shared_resources(app: FastAPI, settings: CommonSettings) -> AsyncIterator[None]:
    redis = create_redis(settings)
    verifier = TokenVerifier(settings, redis)
    try:
        verifier.keyset.load()
    except (OSError, ValueError) as exc:
        # Not fatal: readiness reports it and the key set is re-read on demand.
        log.error("cannot load JWKS", extra={"path": str(settings.jwks_path), "reason": str(exc)})
    app.state.redis = redis
    app.state.verifier = verifier
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
    try:
        yield
    finally:
        await redis.aclose()
