"""App factory and lifespan of the crypto service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from modelgate_common import configure_logging, create_service_app, shared_resources

from .config import CryptoSettings
from .routes import router


def create_app(settings: CryptoSettings | None = None) -> FastAPI:
    settings = settings or CryptoSettings()
    configure_logging("crypto", settings.common.log_level, settings.common.log_dir / "audit.jsonl")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with shared_resources(app, settings.common):
            yield

    app = create_service_app(
        title="modelgate crypto", settings=settings.common, lifespan=lifespan, routers=[router]
    )
    app.state.settings = settings
    return app
