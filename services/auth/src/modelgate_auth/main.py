"""App factory and lifespan of the auth service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from modelgate_common import (
    CheckResult,
    HealthChecks,
    configure_logging,
    create_service_app,
    periodically,
    read_secret,
    shared_resources,
)
from sqlalchemy import text

from .clients import ClientService
from .config import AuthSettings
from .db import create_db_engine, make_session_factory, upgrade_schema
from .familiar import FamiliarAddresses
from .keys import KeyStore, Signer
from .oauth import OAuthError, oauth_error_handler
from .passwords import Passwords
from .revocation import RevocationPublisher
from .routes import router
from .service import AuthService

log = logging.getLogger("modelgate.auth")


def build_service(settings: AuthSettings) -> tuple[AuthService, KeyStore]:
    """Database, keys and password hashing: what the service and the CLI share."""
    engine = create_db_engine(settings.database)
    try:
        upgrade_schema(engine)
        keystore = KeyStore(
            settings.jwt_keys_path, settings.common.jwks_path, settings.jwt_key_bits
        )
        service = AuthService(
            engine=engine,
            sessions=make_session_factory(engine),
            passwords=Passwords(
                settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
            ),
            signer=Signer(keystore),
            common=settings.common,
            access_ttl=settings.access_token_ttl,
            refresh_ttl=settings.refresh_token_ttl,
        )
    except BaseException:
        # The caller disposes the engine of a service it got; of none, this does.
        engine.dispose()
        raise
    return service, keystore


def create_app(settings: AuthSettings | None = None) -> FastAPI:
    settings = settings or AuthSettings()
    configure_logging("auth", **settings.common.logging_options("auth"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service, keystore = build_service(settings)
        try:
            created = keystore.ensure()
            if created:
                log.info("created a JWT signing key", extra={"kid": created})
            service.signer.load()
            if not service.has_admin():
                # The secret file is read only when it is needed: on the first start.
                password = read_secret(settings.admin_password_path).get_secret_value()
                if service.ensure_first_admin(password):
                    log.info("created the first admin user `admin`")
            app.state.auth_service = service
            app.state.client_service = ClientService(service)
            app.state.keystore = keystore
            app.state.hash_limiter = anyio.CapacityLimiter(settings.argon2_concurrency)
            async with shared_resources(app, settings.common):
                app.state.sign_in_exemption = FamiliarAddresses(
                    app.state.redis,
                    service,
                    days=settings.familiar_address_days,
                    kept=settings.familiar_addresses_kept,
                    failures=settings.familiar_address_failures,
                )
                publisher = RevocationPublisher(app.state.redis, service.sessions)
                app.state.revocations = publisher
                await publisher.sync()  # a revoked token stays revoked after a Redis restart
                stop = asyncio.Event()
                background = [
                    asyncio.create_task(
                        periodically(stop, settings.revocation_sync_interval, publisher.sync)
                    ),
                    asyncio.create_task(_housekeeping(service, publisher, stop)),
                ]
                _add_checks(app.state.health, service)
                try:
                    yield
                finally:
                    stop.set()
                    await asyncio.gather(*background)
        finally:
            service.engine.dispose()

    app = create_service_app(
        title="modelgate auth", settings=settings.common, lifespan=lifespan, routers=[router]
    )
    app.add_exception_handler(OAuthError, oauth_error_handler)
    app.state.settings = settings
    return app


async def _housekeeping(
    service: AuthService,
    publisher: RevocationPublisher,
    stop: asyncio.Event,
    interval: float = 3600.0,
) -> None:
    """Hourly until ``stop`` is set: drop revocations and refresh tokens that have expired."""

    async def prune() -> None:
        try:
            await anyio.to_thread.run_sync(publisher.prune)
            await anyio.to_thread.run_sync(service.prune_refresh_tokens)
        except Exception as exc:  # a busy database now is not fatal; try next time
            log.warning("housekeeping failed", extra={"reason": type(exc).__name__})

    await periodically(stop, interval, prune)


def _add_checks(checks: HealthChecks, service: AuthService) -> None:
    def db_ok() -> bool:
        with service.sessions() as session:
            session.execute(text("SELECT 1"))
        return True

    async def database_check() -> CheckResult:
        try:
            await anyio.to_thread.run_sync(db_ok)
        except Exception as exc:
            return CheckResult("fail", f"user database unreachable: {type(exc).__name__}")
        return CheckResult("ok")

    async def signing_key_check() -> CheckResult:
        try:
            kid, _ = service.signer.current()
        except Exception:
            return CheckResult("fail", "no signing key")
        return CheckResult("ok", f"signing with {kid}")

    checks.add("database", database_check)
    checks.add("signing_key", signing_key_check)
