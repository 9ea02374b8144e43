"""App factory and lifespan of the crypto service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from modelgate_common import (
    CheckResult,
    HealthChecks,
    configure_logging,
    create_service_app,
    shared_resources,
)

from .config import CryptoSettings
from .fernet_keyring import KeyringWatcher
from .routes import router
from .service import CryptoService

log = logging.getLogger("modelgate.crypto")


def create_app(settings: CryptoSettings | None = None) -> FastAPI:
    settings = settings or CryptoSettings()
    configure_logging("crypto", **settings.common.logging_options("crypto"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with shared_resources(app, settings.common):
            # Never created here: workers starting together would each make a different
            # keyring. `modelgate init` makes it; until then requests get 503.
            watcher = KeyringWatcher(settings.keyring_path, settings.owner_key_cache_size)
            keyring = watcher.current()
            if keyring is None:
                log.error("no Fernet keyring", extra={"reason": watcher.error})
            else:
                log.info("Fernet keyring loaded", extra={"key_ids": keyring.ids})
            app.state.crypto = CryptoService(settings, watcher)
            checks: HealthChecks = app.state.health
            checks.add("fernet_keyring", lambda: _keyring_check(watcher))
            yield

    app = create_service_app(
        title="modelgate crypto", settings=settings.common, lifespan=lifespan, routers=[router]
    )
    app.state.settings = settings
    return app


async def _keyring_check(watcher: KeyringWatcher) -> CheckResult:
    keyring = watcher.current()
    if keyring is None:
        return CheckResult("fail", "no Fernet keyring")
    summary = f"{len(keyring.keys)} keys, newest id {keyring.newest.id}"
    if watcher.error:
        return CheckResult(
            "degraded", f"keyring file unusable, serving the last good one: {summary}"
        )
    return CheckResult("ok", summary)
